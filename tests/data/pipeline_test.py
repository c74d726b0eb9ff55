"""The grain train/eval pipelines on small hand-made datasets."""

import json
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dualformer_jax import config as config_lib
from dualformer_jax.data import bucket_design, dataset, dropping, examples, records, train_stream
from dualformer_jax.data import eval_batches as eval_batches_lib
from dualformer_jax.data.data_config import DataConfig
from dualformer_jax.data.vocab import BOS_ID, EOS_ID, Vocab

VOCAB = Vocab(["create", "close", "plan", "start", "goal", "wall",
               *[str(i) for i in range(10)], *[f"c{i}" for i in range(40)]])
GRAMMAR = dropping.TraceGrammar.from_vocab(VOCAB)
CREATE, PLAN = VOCAB.id("create"), VOCAB.id("plan")


def make_record(rng, walls=None, clauses=None, plan_len=None, closes=True) -> dict:
  """A maze-like record of random size: prompt, a create/close trace, a plan."""
  def cell():
    return f"{rng.integers(10)} {rng.integers(10)}"
  walls = int(rng.integers(3, 20)) if walls is None else walls
  clauses = int(rng.integers(2, 40)) if clauses is None else clauses
  plan_len = int(rng.integers(2, 9)) if plan_len is None else plan_len
  prompt = f"start {cell()} goal {cell()} " + " ".join(f"wall {cell()}" for _ in range(walls))
  kinds = ["create" if not closes or rng.random() < 0.6 else "close" for _ in range(clauses)]
  kinds[0] = "create"
  trace = " ".join(f"{k} {cell()} c{rng.integers(40)} c{rng.integers(40)}" for k in kinds)
  plan = " ".join(f"plan {cell()}" for _ in range(plan_len))
  return {k: VOCAB.encode(v.split()) for k, v in
          (("prompt", prompt), ("trace", trace), ("plan", plan))}


def write_dataset(directory, train, test, shards=(3, 2)) -> None:
  os.makedirs(directory, exist_ok=True)
  for split, recs, n in (("train", train, shards[0]), ("test", test, shards[1])):
    for i, path in enumerate(records.shard_paths(directory, split, n)):
      records.write_shard(path, [records.encode_record(r["prompt"], r["trace"], r["plan"])
                                 for r in recs[i::n]])
  # Shards hold records i::n, so the split order is shard by shard.
  records.write_meta(directory, {"status": "complete", "vocab": VOCAB.to_list(),
                                 "num_shards": {"train": shards[0], "test": shards[1]},
                                 "counts": {"train": len(train), "test": len(test)}})


def split_order(recs, n):
  return [r for i in range(n) for r in recs[i::n]]


def train_iterator(config, data_dir, *args, **kwargs) -> train_stream.TrainIterator:
  return train_stream.train_iterator(config, dataset.open_dataset(data_dir), *args, **kwargs)


def eval_batches(config, data_dir, *args, **kwargs) -> eval_batches_lib.EvalBatches:
  return eval_batches_lib.EvalBatches(config, dataset.open_dataset(data_dir), *args, **kwargs)


def make_config(**data):
  c = config_lib.base_config()
  c.data.max_prompt_len = 80
  c.data.max_decoder_len = 256
  c.data.num_buckets = 2
  c.data.bucket_pool = 4
  c.data.num_workers = 0
  c.data.seed = 7
  c.data.update(data)
  return DataConfig.from_config(c)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  """200 train / 30 test records, none overlong."""
  rng = np.random.default_rng(0)
  train = [make_record(rng) for _ in range(200)]
  test = [make_record(rng) for _ in range(30)]
  d = str(tmp_path_factory.mktemp("plain"))
  write_dataset(d, train, test)
  return d, split_order(train, 3), split_order(test, 2)


# Record kinds of the `overlong` dataset, by position in the (shard-ordered) split.
LONG_PROMPT = "long_prompt"  # 100 walls: prompt > 80 tokens at every draw
LONG_PLAN = "long_plan"  # 90 plan steps: decoder > 256 at every level
LONG_TRACE = "long_trace"  # 60 clauses (30 close): fits from level 1 on


@pytest.fixture(scope="module")
def overlong(tmp_path_factory):
  rng = np.random.default_rng(1)
  kinds = ["ok"] * 33 + [LONG_PROMPT] * 4 + [LONG_PLAN] * 3 + [LONG_TRACE]
  rng.shuffle(kinds)

  def rec(kind):
    if kind == LONG_PROMPT:
      return make_record(rng, walls=100)
    if kind == LONG_PLAN:
      return make_record(rng, plan_len=90)
    if kind == LONG_TRACE:
      r = make_record(rng, clauses=60, plan_len=4, closes=False)
      toks = VOCAB.decode(r["trace"])
      for i in range(1, 60, 2):  # every other clause becomes a close: 30 creates, 30 closes
        toks[5 * i] = "close"
      return {**r, "trace": VOCAB.encode(toks)}
    return make_record(rng)

  train = [rec(k) for k in kinds]
  test_kinds = ["ok"] * 35 + [LONG_PROMPT, LONG_PLAN]
  rng.shuffle(test_kinds)
  test = [rec(k) for k in test_kinds]
  d = str(tmp_path_factory.mktemp("overlong"))
  write_dataset(d, train, test, shards=(1, 1))
  return d, train, kinds, test, test_kinds


def decoder_of(batch, r):
  """The decoder tokens of row r, bos to eos, and its trace part and plan part."""
  t = int((batch["trace_mask"][r] + batch["plan_mask"][r]).sum())
  decoder = np.append(batch["dec_ids"][r, :t], batch["targets"][r, t - 1])
  trace = batch["targets"][r][batch["trace_mask"][r] == 1]
  plan = batch["targets"][r][batch["plan_mask"][r] == 1]
  return decoder, trace, plan


def clauses(ids):
  starts = list(np.flatnonzero(ids == CREATE)) + [ids.size]
  return [tuple(ids[a:b]) for a, b in zip(starts[:-1], starts[1:])]


def is_subsequence(part, whole):
  it = iter(whole)
  return all(any(x == y for y in it) for x in part)


def check_row(batch, r, rec, level):
  """Asserts row r is exactly rec with its trace dropped at `level`."""
  decoder, trace, plan = decoder_of(batch, r)
  assert decoder[0] == BOS_ID and decoder[-1] == EOS_ID
  np.testing.assert_array_equal(plan[:-1], rec["plan"])  # the plan is never touched
  np.testing.assert_array_equal(decoder[1:-1], np.concatenate([trace, plan[:-1]]))
  if level == 3:
    full = dropping.drop_trace(rec["trace"], 2, GRAMMAR)
    assert is_subsequence(clauses(trace), clauses(full))
  else:
    np.testing.assert_array_equal(trace, dropping.drop_trace(rec["trace"], level, GRAMMAR))
  enc = batch["enc_ids"][r]
  np.testing.assert_array_equal(enc[:rec["prompt"].size + 2],
                                np.concatenate([[BOS_ID], rec["prompt"], [EOS_ID]]))
  assert not enc[rec["prompt"].size + 2:].any()


def check_batch_contract(batch, batch_size, buckets):
  assert set(batch) == {"enc_ids", "dec_ids", "targets", "trace_mask", "plan_mask", "level"}
  b, p = batch["enc_ids"].shape
  t = batch["dec_ids"].shape[1]
  assert b == batch_size and p in buckets.enc and t in buckets.dec
  for k in ("dec_ids", "targets", "trace_mask", "plan_mask"):
    assert batch[k].shape == (b, t)
  assert batch["enc_ids"].dtype == batch["dec_ids"].dtype == batch["targets"].dtype == np.int32
  assert batch["trace_mask"].dtype == batch["plan_mask"].dtype == np.float32
  assert batch["level"].shape == (b,) and batch["level"].dtype == np.int32
  dec, tgt = batch["dec_ids"], batch["targets"]
  real = batch["trace_mask"] + batch["plan_mask"]
  assert real.max() <= 1
  np.testing.assert_array_equal(real == 1, tgt != 0)
  lengths = real.sum(1).astype(int)
  for r in range(b):
    n = lengths[r]
    if n == 0:  # an empty (eval padding) row: `bos eos` / `bos`, nothing to predict
      assert batch["level"][r] == -1 and not tgt[r].any()
      enc = batch["enc_ids"][r]
      assert list(enc[:3]) == [BOS_ID, EOS_ID, 0] and not enc[3:].any()
      assert dec[r, 0] == BOS_ID and not dec[r, 1:].any()
      continue
    np.testing.assert_array_equal(tgt[r, :n - 1], dec[r, 1:n])  # targets = dec_ids shifted
    assert tgt[r, n - 1] == EOS_ID and dec[r, 0] == BOS_ID and not dec[r, n:].any()
    k = int(batch["trace_mask"][r].sum())
    assert batch["trace_mask"][r, :k].all() and batch["plan_mask"][r, k:n].all()
    if n > k + 1:
      assert tgt[r, k] == PLAN


def take(it, n):
  return [next(it) for _ in range(n)]


def test_batches_follow_the_contract_and_the_drawn_level(plain):
  d, train, _ = plain
  it = train_iterator(make_config(), d, 8, 0, 1, include_index=True)
  levels = []
  for batch in take(it, 30):
    index = batch.pop("index")
    check_batch_contract(batch, 8, it.buckets)
    for r in range(8):
      check_row(batch, r, train[index[r]], int(batch["level"][r]))
      levels.append(int(batch["level"][r]))
  assert set(levels) == set(range(5))
  assert it.stats.examples == 240 and it.stats.levels == list(np.bincount(levels, minlength=5))
  assert 0 < it.stats.padding_efficiency <= 1


def test_level_frequencies_through_the_random_map():
  rng = np.random.default_rng(3)
  raw = records.encode_record(**make_record(rng))
  config = make_config()
  ds = grain.MapDataset.source([(0, raw)] * 20_000).seed(11).random_map(
      examples.DrawExample(config, GRAMMAR))
  counts = np.bincount([ds[i]["level"] for i in range(len(ds))], minlength=5)
  expected = 20_000 * np.array(config.level_probs)
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 18.47, (chi2, counts)  # chi-square(4 dof) at p = 0.001; fixed seed


@pytest.mark.parametrize("mode,level", [("complete", 0), ("solution_only", 4), ("fixed_level", 2)])
def test_trace_modes(plain, mode, level):
  d, train, _ = plain
  it = train_iterator(make_config(trace_mode=mode, fixed_level=2), d, 8, 0, 1,
                               include_index=True)
  for batch in take(it, 5):
    assert (batch["level"] == level).all()
    for r in range(8):
      check_row(batch, r, train[batch["index"][r]], level)


def test_two_epochs_draw_different_traces(plain):
  d, _, _ = plain
  it = train_iterator(make_config(), d, 8, 0, 1, include_index=True)
  seen = {}
  for batch in take(it, 60):  # 480 draws of 200 records
    for r in range(8):
      seen.setdefault(int(batch["index"][r]), []).append(decoder_of(batch, r)[0].tolist())
  twice = [v for v in seen.values() if len(v) >= 2]
  assert len(twice) > 150
  differ = sum(v[0] != v[1] for v in twice)
  # Same level twice has probability ~0.26 (0.45^2 + 3 (1/6)^2 + 0.05^2), and level 3 redraws.
  assert differ > 0.5 * len(twice), (differ, len(twice))


def test_same_seed_same_stream_other_seed_other_stream(plain):
  d, _, _ = plain
  a = take(train_iterator(make_config(), d, 8, 0, 1), 6)
  b = take(train_iterator(make_config(), d, 8, 0, 1), 6)
  c = take(train_iterator(make_config(seed=8), d, 8, 0, 1), 6)
  assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
  assert not all(np.array_equal(x["enc_ids"], y["enc_ids"]) for x, y in zip(a, c))


def same_batches(xs, ys):
  return len(xs) == len(ys) and all(
      set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(xs, ys))


@pytest.mark.parametrize("advance", [6, 8])  # mid-pool and on a pool boundary (pool = 4)
def test_restore_reproduces_the_next_batches(plain, advance):
  d, _, _ = plain
  it = train_iterator(make_config(), d, 8, 0, 1)
  take(it, advance)
  state = json.loads(json.dumps(it.get_state()))  # JSON round trip, as in a checkpoint
  stats = it.stats.to_state()
  expected = take(it, 5)
  it2 = train_iterator(make_config(), d, 8, 0, 1)
  it2.set_state(state)
  assert it2.stats.to_state() == stats
  assert same_batches(take(it2, 5), expected)
  assert it2.stats.to_state() == it.stats.to_state()


def test_orbax_checkpoint_with_workers(plain, tmp_path):
  d, _, _ = plain
  config = make_config(num_workers=2)
  it = train_iterator(config, d, 8, 0, 1)
  take(it, 5)
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  expected = take(it, 5)
  it2 = train_iterator(config, d, 8, 0, 1)
  mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
  got = take(it2, 5)
  mngr.close()
  assert same_batches(got, expected)
  # The worker stream holds the same examples as the in-process one, in another order:
  # 24 batches = 6 pools in process = 3 pools per worker = the first 192 positions.
  ref = train_iterator(make_config(), d, 8, 0, 1, include_index=True)
  wit = train_iterator(config, d, 8, 0, 1, include_index=True)
  assert sorted(np.concatenate([b["index"] for b in take(wit, 24)])) == \
      sorted(np.concatenate([b["index"] for b in take(ref, 24)]))
  for x in (it, it2, wit):
    x.close()


def test_processes_get_disjoint_shares_that_cover_the_split(plain):
  d, _, _ = plain
  config = make_config(bucket_pool=5)
  shares = []
  for p in range(2):
    it = train_iterator(config, d, 10, p, 2, include_index=True)
    # 2 pools of 5 batches of 10 = this process's 100 positions of epoch 0.
    shares.append(np.concatenate([b["index"] for b in take(it, 10)]))
  assert all(len(set(s)) == 100 for s in shares)
  assert not set(shares[0]) & set(shares[1])
  assert set(shares[0]) | set(shares[1]) == set(range(200))


def test_overlong_examples_are_skipped_and_counted(overlong):
  d, train, kinds, _, _ = overlong
  it = train_iterator(make_config(), d, 8, 0, 1, include_index=True)
  trace_levels = []
  for batch in take(it, 40):  # 10 whole pools: 320 rows, ~8 epochs of 41 records
    for r in range(8):
      i = int(batch["index"][r])
      assert kinds[i] not in (LONG_PROMPT, LONG_PLAN)
      check_row(batch, r, train[i], int(batch["level"][r]))
      if kinds[i] == LONG_TRACE:
        trace_levels.append(int(batch["level"][r]))
  assert trace_levels and 0 not in trace_levels  # its complete trace does not fit
  s = it.stats
  epochs = (s.examples + s.overlong) // len(train)
  assert 4 * epochs <= s.overlong_prompt <= 4 * (epochs + 1)
  assert 3 * epochs <= s.overlong_decoder <= 4 * (epochs + 1)
  assert s.overlong == s.overlong_prompt + s.overlong_decoder


def test_eval_batches_cover_the_test_split_once_in_order(overlong):
  d, _, _, test, test_kinds = overlong
  ev = eval_batches(make_config(), d, 8)
  assert ev.stats.overlong_prompt == 1 and ev.stats.overlong_decoder == 1
  kept = [r for r, k in zip(test, test_kinds) if k == "ok"]
  batches = list(ev)
  assert len(batches) == len(ev) == 5  # 35 examples
  rows = 0
  for batch in batches:
    check_batch_contract(batch, 8, ev.buckets)
    assert (batch["level"] == -1).all()
    for r in range(8):
      if rows < len(kept) and batch["plan_mask"][r].any():
        check_row(batch, r, kept[rows], 0)
        rows += 1
      else:  # padding rows: nothing to learn from
        assert not batch["trace_mask"][r].any() and not batch["plan_mask"][r].any()
  assert rows == len(kept)
  assert same_batches(list(ev), batches)  # a second pass is identical


@pytest.mark.parametrize("mode,level", [("solution_only", 4), ("fixed_level", 2),
                                        ("fixed_level", 3), ("dualformer", 0)])
def test_eval_batches_use_the_runs_own_format(plain, mode, level):
  """A Solution-Only run's eval loss is on plan-only rows, not on traces it never saw."""
  d, _, test = plain
  config = make_config(trace_mode=mode, fixed_level=level)
  batches = list(eval_batches(config, d, 8))
  rows = [(b, r) for b in batches for r in range(8) if b["plan_mask"][r].any()]
  assert len(rows) == len(test)
  for (batch, r), rec in zip(rows, test):
    check_row(batch, r, rec, level)
  assert same_batches(list(eval_batches(config, d, 8)), batches)  # level 3: seeded


def test_eval_batches_split_over_processes(plain):
  d, _, test = plain
  per = [list(eval_batches(make_config(), d, 4, p, 2)) for p in range(2)]
  assert len(per[0]) == len(per[1]) == 4  # 30 examples, global batch 8
  prompts = []
  for b0, b1 in zip(*per):
    assert b0["enc_ids"].shape == b1["enc_ids"].shape
    assert b0["dec_ids"].shape == b1["dec_ids"].shape
    for b in (b0, b1):
      prompts += [tuple(row[1:list(row).index(EOS_ID)]) for row, m in
                  zip(b["enc_ids"], b["plan_mask"]) if m.any()]
  assert prompts == [tuple(r["prompt"]) for r in test]


def test_eval_records_in_order(plain):
  d, _, test = plain
  got = dataset.open_dataset(d).records("test")
  assert len(got) == len(test)
  for g, t in zip(got, test):
    for k in ("prompt", "trace", "plan"):
      np.testing.assert_array_equal(g[k], t[k])


def test_buckets_respect_the_shape_budget(plain):
  d, _, _ = plain
  for nb in (1, 2, 3):
    b = bucket_design.design_buckets(make_config(num_buckets=nb), dataset.open_dataset(d))
    assert len(b.enc) * len(b.dec) <= nb * nb
    assert b.enc[-1] <= 80 and b.dec[-1] <= 256
    assert all(w % 8 == 0 for w in b.enc[:-1] + b.dec[:-1])
    assert list(b.enc) == sorted(set(b.enc)) and list(b.dec) == sorted(set(b.dec))


def test_processes_share_each_global_batch_and_its_widths(plain):
  """Two processes' rows of a step are one process's global batch: same widths, same rows,
  same stats, so no process needs another's batch shape."""
  d, _, _ = plain
  ds = dataset.open_dataset(d)
  whole = train_stream.train_iterator(make_config(), ds, 8, 0, 1, include_index=True)
  halves = [train_stream.train_iterator(make_config(), ds, 4, p, 2, include_index=True)
            for p in range(2)]
  for _ in range(10):
    batch, parts = next(whole), [next(h) for h in halves]
    assert whole.batch_tokens == halves[0].batch_tokens == halves[1].batch_tokens
    for k in batch:
      np.testing.assert_array_equal(np.concatenate([b[k] for b in parts]), batch[k])
  assert whole.stats == halves[0].stats == halves[1].stats
  assert whole.batch_tokens == int(batch["trace_mask"].sum() + batch["plan_mask"].sum())


def test_missing_or_corrupt_datasets_fail_clearly(plain, tmp_path):
  with pytest.raises(records.DatasetError, match="meta.json missing"):
    train_iterator(make_config(), str(tmp_path / "nothing"), 8, 0, 1)
  d, train, test = plain
  broken = str(tmp_path / "broken")
  write_dataset(broken, train[:40], test[:5])
  os.remove(records.shard_paths(broken, "train", 3)[1])
  with pytest.raises(records.DatasetError, match="missing dataset shard"):
    train_iterator(make_config(), broken, 8, 0, 1)
  meta = records.read_meta(broken)
  write_dataset(broken, train[:40], test[:5])
  records.write_meta(broken, {**meta, "counts": {"train": 41, "test": 5}})
  with pytest.raises(records.DatasetError, match="hold 40 records, meta.json says 41"):
    train_iterator(make_config(), broken, 8, 0, 1)
  records.write_meta(broken, {**meta, "status": "incomplete"})
  with pytest.raises(records.DatasetError, match="incomplete"):
    eval_batches(make_config(), broken, 8)
  records.write_meta(broken, {k: v for k, v in meta.items() if k != "status"})
  with pytest.raises(records.DatasetError, match="incomplete"):  # generation never finished
    eval_batches(make_config(), broken, 8)
  records.write_meta(broken, meta)
  records.write_shard(records.shard_paths(broken, "test", 2)[0], [b"{not json"] * 3)
  with pytest.raises(records.DatasetError, match="corrupt dataset record"):
    dataset.open_dataset(broken).records("test")
  records.write_shard(records.shard_paths(broken, "train", 3)[0], [b"{not json"] * 14)
  with pytest.raises(records.DatasetError, match="corrupt dataset record"):
    next(train_iterator(make_config(), broken, 8, 0, 1))


def test_bad_arguments_are_named(plain):
  d, _, _ = plain
  with pytest.raises(ValueError, match="batch_size=0"):
    train_iterator(make_config(), d, 0, 0, 1)
  with pytest.raises(ValueError, match="process_index=2 / process_count=2"):
    train_iterator(make_config(), d, 8, 2, 2)
  with pytest.raises(ValueError, match="examples in a row are too long"):
    next(train_iterator(make_config(max_prompt_len=12), d, 8, 0, 1))
  with pytest.raises(ValueError, match="level_probs"):
    train_iterator(make_config(level_probs=(0.5, 0.5, 0.5, 0.0, 0.0)), d, 8, 0, 1)
