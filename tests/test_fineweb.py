"""
Sharded pretraining corpora (gpt/corpus.py, data/fineweb/prepare.py, data/openwebtext/prepare.py) on local files in
the hub's own formats (FineWeb-Edu's parquet schema, OpenWebText's parquet conversion), streamed through `datasets`
from disk: the shards and their manifest, the same shards after any interruption, the loader over shards against
the loader over their concatenation, the hub's script-dataset fallback, and the FineWeb recipe rehearsed at CPU scale
(prepare, train across shards, resume, evaluate). No network: tiktoken's files come from ../shared.
"""

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED, assert_same_state, events, load_ckpt, run_inprocess, tiny

from gpt.errors import UserError

pq = pytest.importorskip("pyarrow.parquet")
import pyarrow as pa  # noqa: E402

pytestmark = pytest.mark.skipif(not (SHARED / "tiktoken_cache").is_dir(), reason="offline tiktoken cache not found")

SHARD, VAL = 4000, 3000  # tokens a shard, and val's least, in the tests: ~70 shards of the corpus below
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their can has more will if").split()


def make_docs(n, seed):
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 400))]
        if i % 7 == 0:
            words.insert(rng.randint(0, len(words)), "café, naïve, 東京 🚀")
        if i % 11 == 0:
            words.insert(rng.randint(0, len(words)), "<|endoftext|>")  # plain text inside a document
        docs.append(" ".join(words) + ("\n\n" if i % 3 else ""))
    return docs


def write_fineweb_parquet(path, docs, first_id=0):
    """docs as a parquet file with FineWeb-Edu's columns and types (FineWeb's lack score and int_score)."""
    n = len(docs)
    pq.write_table(pa.table({
        "text": docs, "id": [f"<urn:uuid:{first_id + i:08d}>" for i in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.com/{first_id + i}" for i in range(n)], "date": ["2024-02-21T13:01:02Z"] * n,
        "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/segments/x.warc.gz"] * n,
        "language": ["en"] * n, "language_score": pa.array([0.93] * n, pa.float64()),
        "token_count": pa.array([len(d) // 4 for d in docs], pa.int64()),
        "score": pa.array([3.2] * n, pa.float64()), "int_score": pa.array([3] * n, pa.int64())}),
        path, row_group_size=100)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(parquet files, their documents in order): three files of FineWeb-Edu's schema, ~290K GPT-2 tokens."""
    d = tmp_path_factory.mktemp("fineweb_src")
    docs = [make_docs(500, seed) for seed in range(3)]
    files = [write_fineweb_parquet(d / f"{i:03d}_00000.parquet", part, 500 * i) for i, part in enumerate(docs)]
    return files, [doc for part in docs for doc in part]


@pytest.fixture(scope="module")
def enc():
    import tiktoken
    return tiktoken.get_encoding("gpt2")


def env(tmp):
    return {**os.environ, "TIKTOKEN_CACHE_DIR": str(SHARED / "tiktoken_cache"), "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(Path(tmp) / "hf")}


def prepare_args(files, out_dir, *more, num_proc=2):
    return ["--data_files", *files, "--out_dir", out_dir, "--shard_tokens", SHARD, "--val_tokens", VAL,
            "--num_proc", num_proc, *more]


def prepare(files, out_dir, *more, num_proc=1, check=True, script="data/fineweb/prepare.py"):
    """Run a prepare script as a user would: in a process of its own with num_proc > 1 (its workers are forked),
    else in this one (the same code, without the second or two of importing datasets)."""
    args = prepare_args(files, out_dir, *more, num_proc=num_proc)
    if num_proc == 1:
        code, out, err = run_inprocess(script, *args)
        p = SimpleNamespace(returncode=code, stdout=out, stderr=err)
    else:
        p = subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=env(out_dir.parent),
                           capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def files_of(out_dir):
    """{name: bytes} of a dataset's shards and meta.json (prepare_state.json is the run's, not the dataset's)."""
    return {p.name: p.read_bytes() for p in sorted(Path(out_dir).iterdir())
            if p.name == "meta.json" or p.name.endswith(".bin")}


def stream(out_dir, split):
    meta = json.loads((Path(out_dir) / "meta.json").read_text())
    return np.concatenate([np.fromfile(Path(out_dir) / s["file"], dtype=np.uint16) for s in meta["shards"][split]])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    """The uninterrupted run every other must reproduce."""
    out = tmp_path_factory.mktemp("fineweb_ref") / "data"
    prepare(corpus[0], out, num_proc=2)
    return out


# ----------------------------------------------------------------------------- the shards and the manifest

def test_shards_and_manifest(reference, corpus, enc):
    files, docs = corpus
    meta = json.loads((reference / "meta.json").read_text())
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
    assert meta["complete"] and meta["corpus_end"] and meta["max_tokens"] is None
    assert meta["source"] == ", ".join(str(f.resolve()) for f in files)
    assert meta["prepare"] == {"shard_tokens": SHARD, "val_tokens": VAL, "text_column": "text"}
    # the documents' ids one after another, each ended by <|endoftext|> (the one in the text is plain text)
    ids = [t for d in docs for t in enc.encode_ordinary(d) + [enc.eot_token]]
    val, train = stream(reference, "val"), stream(reference, "train")
    assert np.array_equal(np.concatenate([val, train]), np.array(ids, dtype=np.uint16))
    # val: the first whole documents, the fewest that reach VAL tokens
    lengths = np.cumsum([len(enc.encode_ordinary(d)) + 1 for d in docs])
    assert len(val) == lengths[np.searchsorted(lengths, VAL)] and val[-1] == enc.eot_token
    for split in ("val", "train"):
        shards = meta["shards"][split]
        assert [s["file"] for s in shards] == [f"{split}_{i:06d}.bin" for i in range(len(shards))]
        assert all(s["tokens"] == SHARD for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= SHARD
        assert meta[f"{split}_tokens"] == sum(s["tokens"] for s in shards)
        for s in shards:
            raw = (reference / s["file"]).read_bytes()
            assert len(raw) == 2 * s["tokens"] and hashlib.sha256(raw).hexdigest() == s["sha256"]
    assert len(meta["shards"]["train"]) > 50
    assert not list(reference.glob("*.tmp"))


def test_any_number_of_processes_writes_the_same_bytes(tmp_path, corpus, reference):
    p = prepare(corpus[0], tmp_path / "one", num_proc=1)
    assert files_of(tmp_path / "one") == files_of(reference)
    assert "disk: ~" in p.stdout and "tokens/s" in p.stdout and "ETA" in p.stdout  # (estimated from the parquet)
    again = prepare(corpus[0], tmp_path / "one", num_proc=1)  # the same command again: nothing to do
    assert "nothing to do" in again.stdout and files_of(tmp_path / "one") == files_of(reference)


def test_max_tokens_is_a_prefix_that_grows_into_the_full_run(tmp_path, corpus, reference):
    out = tmp_path / "data"
    prepare(corpus[0], out, "--max_tokens", "10_001")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train_tokens"] == 10_001 and meta["complete"] and not meta["corpus_end"]
    assert [s["tokens"] for s in meta["shards"]["train"]] == [SHARD, SHARD, 10_001 - 2 * SHARD]
    assert np.array_equal(stream(out, "train"), stream(reference, "train")[:10_001])
    assert np.array_equal(stream(out, "val"), stream(reference, "val"))  # val does not depend on max_tokens
    # cutting it shorter would delete shards: only when asked
    p = prepare(corpus[0], out, "--max_tokens", "5K", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "--overwrite" in p.stderr and "10,001 train tokens" in p.stderr
    prepare(corpus[0], out)  # the whole corpus now: the old prefix's shards stay, its short tail is written again
    assert files_of(out) == files_of(reference)


def test_another_dataset_in_out_dir_is_replaced_only_when_asked(tmp_path, corpus):
    out = tmp_path / "data"
    prepare(corpus[0][:1], out, "--max_tokens", "3000")
    p = prepare(corpus[0][:1], out, "--shard_tokens", "1000", check=False)  # (--shard_tokens given twice: the last)
    assert p.returncode == 1 and "--overwrite" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    prepare(corpus[0][:1], out, "--shard_tokens", "1000", "--max_tokens", "3000", "--overwrite")
    assert json.loads((out / "meta.json").read_text())["prepare"]["shard_tokens"] == 1000
    # an older dataset of one train.bin is another dataset too
    old = tmp_path / "old"
    old.mkdir()
    (old / "train.bin").write_bytes(b"\0\0" * 100)
    (old / "val.bin").write_bytes(b"\0\0" * 100)
    (old / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16"}))
    p = prepare(corpus[0][:1], old, check=False)
    assert p.returncode == 1 and "one train.bin" in p.stderr and "--overwrite" in p.stderr
    assert (old / "train.bin").exists()


# ----------------------------------------------------------------------------- interruptions

def start(files, out_dir, *more, num_proc=1):
    log = open(out_dir.parent / f"{out_dir.name}.log", "a")
    return subprocess.Popen([sys.executable, "data/fineweb/prepare.py",
                             *map(str, prepare_args(files, out_dir, *more, num_proc=num_proc))],
                            cwd=ROOT, env=env(out_dir.parent), stdout=log, stderr=subprocess.STDOUT)


def listed(out_dir):
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
        return len(meta["shards"]["val"]) + len(meta["shards"]["train"])
    except (OSError, ValueError, KeyError):
        return 0


def interrupt_when(p, out_dir, ready, sig=signal.SIGKILL, timeout=60):
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        if ready():
            p.send_signal(sig)
            return p.wait(timeout=timeout)
        time.sleep(0.001)
    raise AssertionError(f"the run ended before the moment to interrupt it (status {p.poll()})")


@pytest.mark.parametrize("num_proc", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_killed_at_any_moment_then_rerun_gives_the_same_shards(tmp_path, corpus, reference, num_proc):
    out = tmp_path / "data"
    moments = [  # while val is written (a temp file is there or nothing is listed yet), between shards, late
        lambda: any(out.glob("*.tmp")) or listed(out) >= 1,
        lambda: listed(out) >= 10,
        lambda: listed(out) >= 35,
    ]
    for i, ready in enumerate(moments):
        sig = signal.SIGINT if i == 1 else signal.SIGKILL  # Ctrl-C too: one line, and the shards kept
        code = interrupt_when(start(corpus[0], out, num_proc=num_proc), out, ready, sig)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else -signal.SIGINT), code
    log = (tmp_path / "data.log").read_text()
    assert "Traceback" not in log and "stopped by Ctrl-C; the " in log and "rerun the same command" in log
    assert "continuing after " in log
    prepare(corpus[0], out)  # (in this process: any num_proc writes the same)
    assert files_of(out) == files_of(reference)
    assert not list(out.glob("*.tmp"))


def test_a_full_disk_is_one_line_and_the_same_command_continues(tmp_path, corpus, reference, monkeypatch):
    import gpt.datafiles
    out = tmp_path / "data"
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up after a few shards: fsync is where a full disk shows (delayed allocation)
        calls["n"] += 1
        if calls["n"] > 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(gpt.datafiles.os, "fsync", fsync)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, stdout, err = run_inprocess("data/fineweb/prepare.py", *prepare_args(corpus[0], out, num_proc=1))
    assert code == 1, err
    assert err.strip().count("\n") == 0 and "is full" in err and "rerun the same command" in err
    assert "complete shards are kept" in err
    assert 0 < listed(out) < 10 and not list(out.glob("*.tmp"))
    monkeypatch.setattr(gpt.datafiles.os, "fsync", real_fsync)
    prepare(corpus[0], out, num_proc=1)
    assert files_of(out) == files_of(reference)


def test_a_damaged_shard_is_written_again(tmp_path, corpus, reference):
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    (out / "train_000007.bin").write_bytes(b"\0" * 10)  # a copy cut short
    (out / "train_000030.bin").unlink()
    p = prepare(corpus[0], out, num_proc=1)
    assert "continuing after 8 shards" in p.stdout  # val's 1 and train's 0..6
    assert files_of(out) == files_of(reference)


# ----------------------------------------------------------------------------- the loader

def write_sharded(out_dir, sizes, seed=0, vocab=50257):
    """A sharded dataset of random ids with the given shard sizes per split, and the same data as one file per
    split in out_dir/flat: (sharded dir, flat dir)."""
    rng = np.random.default_rng(seed)
    sharded, flat = Path(out_dir) / "sharded", Path(out_dir) / "flat"
    sharded.mkdir(parents=True)
    flat.mkdir()
    meta = {"tokenizer": "gpt2", "vocab_size": vocab, "dtype": "uint16", "complete": True,
            "shards": {"train": [], "val": []}}
    for split, split_sizes in sizes.items():
        ids = rng.integers(vocab, size=sum(split_sizes)).astype(np.uint16)
        ids.tofile(flat / f"{split}.bin")
        for i, (a, n) in enumerate(zip(np.cumsum([0, *split_sizes[:-1]]), split_sizes)):
            ids[a:a + n].tofile(sharded / f"{split}_{i:06d}.bin")
            meta["shards"][split].append({"file": f"{split}_{i:06d}.bin", "tokens": int(n)})
        meta[f"{split}_tokens"] = int(sum(split_sizes))
    (sharded / "meta.json").write_text(json.dumps(meta))
    (flat / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("shards", "complete")}))
    return sharded, flat


def test_the_loader_over_shards_equals_the_loader_over_their_concatenation(tmp_path):
    from gpt.tokendata import TokenData
    # shards shorter than a window too: a window then spans several
    sharded, flat = write_sharded(tmp_path, {"train": [500, 7, 300, 1, 64, 900, 33, 2000], "val": [40, 200, 5, 90]})
    a, b = (TokenData(str(d), 32, 16, "cpu", seed=7) for d in (sharded, flat))
    crossing = 0
    for split in ("train", "val"):
        for step in [*range(100), 10**6, ("eval", 3)]:
            for micro in range(2):
                xa, ya = a.batch(split, step, micro)
                xb, yb = b.batch(split, step, micro)
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # and the windows do cross shard boundaries: the starts drawn, by the loader's own rule
    from gpt.tokendata import seed_from
    starts = np.cumsum([500, 7, 300, 1, 64, 900, 33])
    for step in range(100):
        g = torch.Generator().manual_seed(seed_from(7, "train", step, 0))
        ix = torch.randint(3805 - 32, (16,), generator=g).tolist()
        crossing += sum(any(i < s < i + 33 for s in starts) for i in ix)
    assert crossing > 20  # (of 1,600 windows, ~4% cross)
    assert a.meta["train_tokens"] == 3805


def test_the_loader_checks_the_manifest(tmp_path, capsys):
    from gpt.tokendata import TokenData, load_meta
    sharded, _ = write_sharded(tmp_path, {"train": [100, 100], "val": [100]})
    (sharded / "train_000001.bin").write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match=r"train_000001.bin is 10 bytes, not the 100 uint16 tokens.*re-run"):
        TokenData(str(sharded), 8, 2, "cpu")
    (sharded / "train_000001.bin").unlink()
    with pytest.raises(UserError, match=r"train_000001.bin not found \(meta.json lists it\)"):
        load_meta(str(sharded))
    meta = json.loads((sharded / "meta.json").read_text())
    meta["shards"]["train"], meta["complete"] = meta["shards"]["train"][:1], False
    (sharded / "meta.json").write_text(json.dumps(meta))
    load_meta(str(sharded))  # a dataset still being prepared is read as far as it goes, saying so
    assert "still being prepared (1 train shards so far)" in capsys.readouterr().out
    meta["shards"]["train"] = []
    (sharded / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="no train shard yet"):
        load_meta(str(sharded))
    meta["shards"]["train"] = [{"file": "../../etc/passwd", "tokens": 5}]
    (sharded / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="lists its shards wrongly"):
        load_meta(str(sharded))


# ----------------------------------------------------------------------------- the recipe at CPU scale

def test_the_fineweb_recipe_rehearsed_on_cpu(tmp_path, reference):
    """config/train_gpt2_fineweb.py at toy size on the reference's ~70 shards: its schedule, its evaluation with
    HellaSwag in the loop, windows across shard boundaries; stopped halfway and resumed it is the uninterrupted run
    bit for bit; eval.py then scores the run on the sharded val split and HellaSwag."""
    hellaswag = tmp_path / "hellaswag_val.jsonl"
    hellaswag.write_text("".join(json.dumps(dict(
        ind=i, activity_label="Cooking", ctx_a="A man cuts an onion on a board.", ctx_b="he", split="val",
        split_type="indomain", endings=[" puts it in a pan.", " sings a song.", " flies away.", " reads a book."],
        label=0, source_id=f"x~{i}")) + "\n" for i in range(3)))
    run = ["config/train_gpt2_fineweb.py", f"--data_dir={reference}", *tiny(), "--batch_size=4",
           "--gradient_accumulation_steps=2", "--max_iters=6", "--warmup_iters=2", "--lr_decay_iters=6",
           "--eval_interval=3", "--eval_iters=2", f"--eval_tasks_data={hellaswag}", "--eval_tasks_limit=2",
           "--log_interval=1", "--plot=False"]
    whole, half = tmp_path / "whole", tmp_path / "half"
    code, out, err = run_inprocess("train.py", *run, f"--out_dir={whole}")
    assert code == 0, err[-3000:]
    assert "tokens per iteration: 256" in out
    evals = events(whole, "eval")
    assert [e["iter"] for e in evals] == [0, 3, 6] and all("hellaswag/acc" in json.dumps(e) for e in evals)
    code, _, err = run_inprocess("train.py", *run, f"--out_dir={half}", "--max_iters=3")
    assert code == 0, err[-3000:]
    code, out, err = run_inprocess("train.py", *run, f"--out_dir={half}", "--init_from=resume")
    assert code == 0, err[-3000:]
    assert_same_state(load_ckpt(half / "ckpt.pt"), load_ckpt(whole / "ckpt.pt"))
    results = tmp_path / "eval.json"
    code, out, err = run_inprocess("eval.py", f"--out_dir={whole}", "--tasks=hellaswag,perplexity",
                                   f"--hellaswag_data={hellaswag}", f"--perplexity_data={reference}", "--limit=4",
                                   f"--results_file={results}", "--progress=False", "--device=cpu")
    assert code == 0, err[-3000:]
    got = json.loads(results.read_text())["results"]
    assert got["hellaswag"]["n"] == 3 and 0 < got["perplexity"]["ppl"] < 1e6


@pytest.mark.slow
def test_two_processes_over_shards_match_one(tmp_path, reference):
    """DDP over the shards: 2 processes x 2 micro-steps take the steps 1 process with 4 takes (the windows are a
    function of the global micro-step, wherever the shard boundaries fall)."""
    from conftest import run
    args = [f"--data_dir={reference}", *tiny(batch_size=4, dtype="float32", plot=False, decay_lr=False,
                                             learning_rate=3e-3, eval_iters=2, eval_interval=4,
                                             gradient_accumulation_steps=4, max_iters=4)]
    run("train.py", *args, f"--out_dir={tmp_path / 'one'}")
    run("train.py", *args, f"--out_dir={tmp_path / 'two'}", nproc=2)
    assert_same_state(load_ckpt(tmp_path / "one" / "ckpt.pt"), load_ckpt(tmp_path / "two" / "ckpt.pt"), atol=1e-5)


# ----------------------------------------------------------------------------- OpenWebText and hub datasets

def owt_parquet(path, docs):
    pq.write_table(pa.table({"text": docs}), path)  # the columns of Skylion007/openwebtext's parquet conversion
    return path


def scripts_hub(monkeypatch, converted):
    """datasets.load_dataset as the hub answers for a repository that ships a loading script: the RuntimeError of
    datasets>=4, and at revision refs/convert/parquet the conversion (converted: local parquet files; None: none)."""
    import datasets
    real, calls = datasets.load_dataset, []

    def load_dataset(path, name=None, split=None, streaming=False, revision=None, **kwargs):
        calls.append((path, revision))
        if path in ("parquet", "json", "text", "csv"):
            return real(path, name, split=split, streaming=streaming, **kwargs)
        if revision is None:
            raise RuntimeError(f"Dataset scripts are no longer supported, but found {path.split('/')[-1]}.py")
        if revision == "refs/convert/parquet" and converted:
            return real("parquet", data_files={split or "train": [str(f) for f in converted]}, split=split,
                        streaming=streaming)
        raise FileNotFoundError(f"Revision '{revision}' doesn't exist for dataset '{path}' on the Hub.")
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return calls


def test_openwebtext_reads_the_parquet_conversion_of_a_script_dataset(tmp_path, monkeypatch, enc):
    docs = make_docs(120, 5)
    calls = scripts_hub(monkeypatch, [owt_parquet(tmp_path / "0000.parquet", docs)])
    out = tmp_path / "owt"
    code, stdout, err = run_inprocess("data/openwebtext/prepare.py", "--out_dir", out, "--num_proc", 1,
                                      "--shard_tokens", 2000, "--val_tokens", 1000)
    assert code == 0, err
    assert calls[:2] == [("Skylion007/openwebtext", None), ("Skylion007/openwebtext", "refs/convert/parquet")]
    assert "ships a loading script (openwebtext.py)" in stdout and "refs/convert/parquet" in stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "hf:Skylion007/openwebtext" and meta["complete"]
    ids = [t for d in docs for t in enc.encode_ordinary(d) + [enc.eot_token]]
    assert np.array_equal(np.concatenate([stream(out, "val"), stream(out, "train")]), np.array(ids, dtype=np.uint16))


def test_a_script_dataset_without_a_conversion_is_one_line(tmp_path, monkeypatch):
    scripts_hub(monkeypatch, None)
    code, stdout, err = run_inprocess("data/openwebtext/prepare.py", "--out_dir", tmp_path / "owt", "--num_proc", 1)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "ships a loading script (openwebtext.py), which datasets>=4 no longer runs" in err
    assert "--data_files" in err and "datasets<4" in err


def test_eval_and_sft_data_take_the_same_fallback(tmp_path, monkeypatch):
    from gpt.prefs import read_rows
    from gpt.tasks import load_text
    text = tmp_path / "0000.parquet"
    pq.write_table(pa.table({"text": ["first line", "second line"], "prompt": ["a", "b"]}), text)
    scripts_hub(monkeypatch, [text])
    assert load_text("hf:someone/wikitext:raw:test", None, {}) == (None, "first line\n\nsecond line")
    assert [r for _, r in read_rows("hf:someone/sft")] == [{"text": "first line", "prompt": "a"},
                                                          {"text": "second line", "prompt": "b"}]
    scripts_hub(monkeypatch, None)
    with pytest.raises(UserError, match=r"ships a loading script.*--perplexity_data=file.txt"):
        load_text("hf:someone/wikitext", None, {})
    with pytest.raises(UserError, match=r"ships a loading script.*local .jsonl file"):
        read_rows("hf:someone/sft")


def test_a_partial_conversion_says_so(monkeypatch, capsys):
    import huggingface_hub
    from gpt import hubdata
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, *a, **k: [
        "plain_text/partial-train/0000.parquet", "plain_text/partial-train/0001.parquet", "README.md"])
    assert hubdata.partial_conversion("Skylion007/openwebtext") == "plain_text/partial-train"
    assert hubdata.partial_conversion("Skylion007/openwebtext", "other") == ""


@pytest.mark.parametrize("kind", ["jsonl", "txt", "parquet"])
def test_openwebtext_local_files(tmp_path, enc, kind):
    docs = make_docs(40, 9)
    if kind == "jsonl":  # also --text_column, other columns dropped
        path = tmp_path / "docs.jsonl"
        path.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
        args = ["--data_files", path, "--text_column", "body"]
    elif kind == "txt":  # one document a file
        paths = [tmp_path / f"doc{i:02d}.txt" for i in range(len(docs))]
        for p, d in zip(paths, docs):
            p.write_text(d, encoding="utf-8", newline="")
        args = ["--data_files", *paths]
    else:
        args = ["--data_files", owt_parquet(tmp_path / "docs.parquet", docs)]
    out = tmp_path / "out"
    code, _, err = run_inprocess("data/openwebtext/prepare.py", *args, "--out_dir", out, "--num_proc", 1,
                                 "--shard_tokens", 1500, "--val_tokens", 500)
    assert code == 0, err
    ids = [t for d in docs for t in enc.encode_ordinary(d) + [enc.eot_token]]
    assert np.array_equal(np.concatenate([stream(out, "val"), stream(out, "train")]), np.array(ids, dtype=np.uint16))
    assert len(json.loads((out / "meta.json").read_text())["shards"]["train"]) > 2
