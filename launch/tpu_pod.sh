#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (one host or a pod slice): creates the slice or reuses it,
# copies this checkout (or clones REPO_URL) to every worker, installs the requirements,
# mounts the GCS bucket of WORKDIR with gcsfuse on every worker, generates the dataset on
# worker 0, then runs the same `python -m dualformer_jax.main` line on all workers
# (--worker=all); jax.distributed.initialize() finds the slice's hosts by itself.
#
#   launch/tpu_pod.sh [--dry-run] --config=configs/maze.py:paper_30 [main flags...]
#   TPU_NAME=df-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 WORKDIR=gs://my-bucket/maze30 \
#       launch/tpu_pod.sh --config=configs/maze.py:paper_30
#
# Variables (environment):
#   TPU_NAME          (required) name of the TPU VM slice
#   ZONE              (required) its zone, e.g. us-central2-b
#   WORKDIR           (required) gs://BUCKET/PATH: data, checkpoints, metrics, eval. It is
#                     mounted at MOUNT_ROOT/BUCKET with gcsfuse, because the dataset, metric and
#                     evaluation writers use local file calls (main.py refuses gs:// paths)
#   ACCELERATOR_TYPE  slice type, e.g. v4-32 or v5litepod-16; required when the slice does not exist
#   PROJECT           GCP project (default: gcloud's configured project)
#   RUNTIME_VERSION   TPU VM image (default: tpu-ubuntu2204-base)
#   SPOT              1: create a Spot slice (preemptible; rerun the script to resume)
#   REPO_URL, REPO_REF  clone this git URL at REPO_REF (default main) instead of copying this checkout
#   REMOTE_DIR        code directory on the workers, relative to the home directory (default: dualformer_jax)
#   MOUNT_ROOT        where buckets are mounted on the workers (default: /gcs)
#   GCSFUSE_FLAGS     (default: --implicit-dirs --rename-dir-limit=1000000 --metadata-cache-ttl-secs=0)
#                     renames: orbax finalizes a checkpoint by renaming its directory; ttl 0: hosts
#                     see each other's files at once
#   STEPS             comma-separated subset of create,copy,install,mount,generate,train (default: all)
#   DRY_RUN           1 (or --dry-run): print the commands, run nothing (no gcloud needed)
#
# Rerunning the script resumes the run from the latest checkpoint in WORKDIR; a preempted
# (Spot) slice is deleted and created again. STEPS=train reruns only the training line.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "tpu_pod.sh: error: $*" >&2; exit 2; }

DRY_RUN=${DRY_RUN:-0}
flags=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --workdir|--workdir=*) die "do not pass --workdir: it is WORKDIR mounted on the workers" ;;
    *) flags+=("$arg") ;;
  esac
done

[[ -n "${TPU_NAME:-}" ]] || die "TPU_NAME is not set (the TPU VM slice to create or reuse); --help for all variables"
[[ -n "${ZONE:-}" ]] || die "ZONE is not set (e.g. us-central2-b)"
[[ -n "${WORKDIR:-}" ]] || die "WORKDIR is not set (gs://BUCKET/PATH)"
[[ "$WORKDIR" =~ ^gs://([a-z0-9][-a-z0-9_.]*)(/.*)?$ ]] || die "WORKDIR=$WORKDIR is not gs://BUCKET/PATH"
BUCKET=${BASH_REMATCH[1]}
BUCKET_PATH=${BASH_REMATCH[2]#/}
[[ -n "$BUCKET_PATH" ]] || die "WORKDIR=$WORKDIR: give a path inside the bucket, e.g. gs://$BUCKET/maze30"
printf '%s\n' "${flags[@]}" | grep -q -- '^--config=' || die "pass --config=FILE[:preset] (a main.py flag)"

RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-dualformer_jax}
MOUNT_ROOT=${MOUNT_ROOT:-/gcs}
GCSFUSE_FLAGS=${GCSFUSE_FLAGS:---implicit-dirs --rename-dir-limit=1000000 --metadata-cache-ttl-secs=0}
STEPS=${STEPS:-create,copy,install,mount,generate,train}
for step in ${STEPS//,/ }; do
  case "$step" in create|copy|install|mount|generate|train) ;; *) die "STEPS: unknown step '$step'" ;; esac
done
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }
MOUNTED_WORKDIR="$MOUNT_ROOT/$BUCKET/$BUCKET_PATH"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ "$DRY_RUN" != 1 ]]; then
  command -v gcloud > /dev/null || die "gcloud not found: install the Google Cloud SDK (or use --dry-run)"
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && where+=(--project="$PROJECT")

shquote() {  # one word as a shell would need it, readably: plain, or in single quotes
  if [[ "$1" =~ ^[-A-Za-z0-9_./=:,@%+]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() { printf '+'; for word in "$@"; do printf ' '; shquote "$word"; done; }
run() {  # prints the command; runs it unless DRY_RUN=1
  show "$@"; printf '\n'
  [[ "$DRY_RUN" == 1 ]] || "$@"
}
on_workers() {  # $1: all | worker index; $2: a shell command line for the workers
  run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker="$1" --command="$2"
}
quoted() { printf ' %q' "$@"; }

if has_step create; then
  describe=("${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)')
  if [[ "$DRY_RUN" == 1 ]]; then
    show "${describe[@]}"
    printf '   # reuse the slice if it is up; if missing (or PREEMPTED: delete it first):\n'
    create_needed=1
  elif state=$("${describe[@]}" 2> /dev/null); then
    if [[ "$state" == PREEMPTED || "$state" == TERMINATED ]]; then
      echo "TPU $TPU_NAME is $state: deleting it to create it again"
      run "${gcloud_tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
      create_needed=1
    else
      echo "reusing TPU $TPU_NAME (state: $state)"
      create_needed=0
    fi
  else
    create_needed=1
  fi
  if [[ "$create_needed" == 1 ]]; then
    if [[ -z "${ACCELERATOR_TYPE:-}" ]]; then
      [[ "$DRY_RUN" == 1 ]] ||
        die "TPU $TPU_NAME does not exist: set ACCELERATOR_TYPE (e.g. v4-32) to create it"
      echo "# ACCELERATOR_TYPE is unset: a real run stops here if the slice does not exist"
    fi
    create=("${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}"
            --accelerator-type="${ACCELERATOR_TYPE:-ACCELERATOR_TYPE}" --version="$RUNTIME_VERSION")
    [[ "${SPOT:-0}" == 1 ]] && create+=(--spot)
    run "${create[@]}"
  fi
fi

dir=$(printf %q "$REMOTE_DIR")
if has_step copy; then
  if [[ -n "${REPO_URL:-}" ]]; then
    ref=$(printf %q "${REPO_REF:-main}")
    on_workers all "if [ -d $dir/.git ]; then
  git -C $dir fetch --depth 1 origin $ref && git -C $dir checkout --force FETCH_HEAD
else
  git clone --depth 1 --branch $ref $(printf %q "$REPO_URL") $dir
fi"
  else
    git -C "$REPO" rev-parse --git-dir > /dev/null 2>&1 ||
      die "$REPO is not a git checkout: set REPO_URL to clone instead"
    archive="${TMPDIR:-/tmp}/dualformer_jax_code.tgz"
    # Tracked and untracked-but-not-ignored files: the working tree as it is, no runs or caches.
    printf '+ git -C %q ls-files -z --cached --others --exclude-standard | tar --null -T - -czf %q\n' \
      "$REPO" "$archive"
    if [[ "$DRY_RUN" != 1 ]]; then
      git -C "$REPO" ls-files -z --cached --others --exclude-standard |
        (cd "$REPO" && tar --null -T - -czf "$archive")
    fi
    run "${gcloud_tpu[@]}" scp "$archive" "$TPU_NAME:dualformer_jax_code.tgz" "${where[@]}" --worker=all
    on_workers all "rm -rf $dir && mkdir -p $dir && tar -xzf dualformer_jax_code.tgz -C $dir"
  fi
fi

if has_step install; then
  on_workers all "cd $dir && python3 -m pip install -q -U pip &&
  python3 -m pip install -q -r requirements.txt 'jax[tpu]'"
fi

if has_step mount; then
  mnt=$(printf %q "$MOUNT_ROOT/$BUCKET")
  # gcsfuse from Google's apt repository (cloud.google.com/storage/docs/cloud-storage-fuse/install).
  keyring=/usr/share/keyrings/cloud.google.asc
  on_workers all "if ! command -v gcsfuse > /dev/null; then
  echo \"deb [signed-by=$keyring] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee $keyring > /dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse || exit 1
fi
sudo mkdir -p $mnt && sudo chown \$(id -u):\$(id -g) $mnt &&
  { mountpoint -q $mnt || gcsfuse $GCSFUSE_FLAGS $(printf %q "$BUCKET") $mnt; }"
fi

main=(python3 -m dualformer_jax.main "${flags[@]}" --workdir="$MOUNTED_WORKDIR")
# Generation runs once, on worker 0, before the hosts join, on CPU (no TPU runtime is
# started on one host of a pod); the later --mode and --distributed win.
if has_step generate; then
  on_workers 0 "cd $dir && JAX_PLATFORMS=cpu$(quoted "${main[@]}" --mode=generate --distributed=off)"
fi
if has_step train; then
  on_workers all "cd $dir &&$(quoted "${main[@]}" --distributed=on)"
fi
