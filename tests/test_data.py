"""
Tests of the data preparation scripts, run as subprocesses the way users run them
(`python data/<name>/prepare.py ...` from the repo root), writing only into pytest temp dirs.
Needs ../shared beside the repo (Tiny Shakespeare and tiktoken's GPT-2 files) so nothing is downloaded.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT as REPO
from conftest import SHARED

from gpt import datafiles

SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
TIKTOKEN_CACHE = SHARED / "tiktoken_cache"
BAD_URL = "http://127.0.0.1:9/x"  # discard port: refused at once, never the network

needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"offline Tiny Shakespeare not found at {SHAKESPEARE}")
needs_tiktoken = pytest.mark.skipif(not TIKTOKEN_CACHE.is_dir(), reason=f"offline tiktoken cache not found at {TIKTOKEN_CACHE}")



def run(script, *args, env=None):
    # run a prepare script from the repo root; tiktoken and Hugging Face stay offline,
    # the HF cache goes to a temp dir given by the caller (env) or is left as it is
    full_env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(TIKTOKEN_CACHE), "HF_HUB_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, f"data/{script}/prepare.py", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120)


def check_ok(result):
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def load_bins(out_dir):
    meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    train = np.fromfile(out_dir / "train.bin", dtype=meta["dtype"])
    val = np.fromfile(out_dir / "val.bin", dtype=meta["dtype"])
    return meta, train, val


@pytest.fixture(scope="module")
def enc():
    if not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"offline tiktoken cache not found at {TIKTOKEN_CACHE}")
    import tiktoken
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
        yield tiktoken.get_encoding("gpt2")


# -----------------------------------------------------------------------------
# gpt/datafiles.py: the writers

def test_write_tokens_array_and_chunks(tmp_path):
    ids = np.arange(1000, dtype=np.int64) * 60
    datafiles.write_tokens(tmp_path / "a.bin", ids, np.uint16, chunk_size=300)
    assert np.array_equal(np.fromfile(tmp_path / "a.bin", dtype=np.uint16), ids)
    # chunks of different sizes, with the total given up front
    chunks = [ids[:1], ids[1:700], ids[700:700], ids[700:]]
    datafiles.write_tokens(tmp_path / "b.bin", iter(chunks), np.uint16, num_tokens=len(ids))
    assert (tmp_path / "b.bin").read_bytes() == (tmp_path / "a.bin").read_bytes()
    datafiles.write_tokens(tmp_path / "empty.bin", [], np.uint16)
    assert (tmp_path / "empty.bin").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "empty.bin"]  # no temp files left


def test_write_tokens_rejects_bad_input_and_keeps_old_file(tmp_path):
    path = tmp_path / "a.bin"
    datafiles.write_tokens(path, [1, 2, 3], np.uint16)
    with pytest.raises(ValueError, match="fit uint16"):
        datafiles.write_tokens(path, np.array([1, 65536]), np.uint16)  # would wrap around to 0
    with pytest.raises(ValueError, match="expected num_tokens"):
        datafiles.write_tokens(path, iter([np.array([1, 2])]), np.uint16, num_tokens=3)
    with pytest.raises(ValueError, match="more than num_tokens"):
        datafiles.write_tokens(path, iter([np.array([1, 2])]), np.uint16, num_tokens=1)
    # a failed write leaves the previous file untouched and no temp file behind
    assert np.array_equal(np.fromfile(path, dtype=np.uint16), [1, 2, 3])
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_write_splits_picks_the_dtype_and_refuses_ids_outside_the_vocabulary(tmp_path):
    # GPT-2's ids fit uint16; a 100,000-token vocabulary needs uint32, recorded in meta.json
    datafiles.write_splits(tmp_path, {"train": [0, 50256], "val": [7]}, vocab_size=50257, tokenizer="gpt2")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (meta["dtype"], meta["train_tokens"], meta["val_tokens"]) == ("uint16", 2, 1)
    datafiles.write_splits(tmp_path, {"train": [0, 99999], "val": [70000]}, vocab_size=100000, tokenizer="bpe")
    assert json.loads((tmp_path / "meta.json").read_text())["dtype"] == "uint32"
    assert np.array_equal(np.fromfile(tmp_path / "train.bin", dtype=np.uint32), [0, 99999])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # an id the vocabulary does not have, even one that uint16 could store, is refused before anything is written
    for ids, vocab in (([1, 65536], 50257), ([1, 50257], 50257), ([-1], 65)):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            datafiles.write_splits(tmp_path, {"train": ids, "val": [0]}, vocab_size=vocab, tokenizer="gpt2")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_write_meta(tmp_path):
    path = datafiles.write_meta(tmp_path, vocab_size=3, chars="\nab", tokenizer="char")
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"vocab_size": 3, "chars": "\nab", "tokenizer": "char"}
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


# -----------------------------------------------------------------------------
# shakespeare_char and shakespeare

@needs_shakespeare
def test_shakespeare_char(tmp_path):
    check_ok(run("shakespeare_char", "--input", SHAKESPEARE, "--out_dir", tmp_path))
    meta, train, val = load_bins(tmp_path)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    chars = meta["chars"]
    assert meta == {"tokenizer": "char", "vocab_size": 65, "dtype": "uint16", "train_tokens": len(train),
                    "val_tokens": len(val), "source": str(SHAKESPEARE.resolve()), "chars": chars}
    assert chars == "".join(sorted(set(text)))
    assert len(train) + len(val) == 1_115_394
    assert len(train) == int(0.9 * 1_115_394)
    assert "".join(chars[i] for i in np.concatenate([train, val])) == text


@needs_shakespeare
def test_shakespeare_bpe_matches_tiktoken(tmp_path, enc):
    check_ok(run("shakespeare", "--input", SHAKESPEARE, "--out_dir", tmp_path))
    meta, train, val = load_bins(tmp_path)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    n = int(0.9 * len(text))
    assert meta == {"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16", "train_tokens": len(train),
                    "val_tokens": len(val), "source": str(SHAKESPEARE.resolve())}
    assert train.tolist() == enc.encode_ordinary(text[:n])
    assert val.tolist() == enc.encode_ordinary(text[n:])
    assert enc.decode(train.tolist()) + enc.decode(val.tolist()) == text


@pytest.mark.parametrize("script", ["shakespeare_char", pytest.param("shakespeare", marks=needs_tiktoken)])
def test_download_skipped_when_input_present(tmp_path, script):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    result = run(script, "--out_dir", tmp_path, "--url", BAD_URL)  # would fail if it tried to download
    check_ok(result)
    assert "skipping download" in result.stdout
    meta, train, val = load_bins(tmp_path)
    assert meta["source"] == str((tmp_path / "input.txt").resolve())
    assert meta["train_tokens"] == len(train) > 0 and meta["val_tokens"] == len(val) > 0


@pytest.mark.parametrize("script", ["shakespeare_char", "shakespeare"])
def test_failed_download_is_one_clear_line(tmp_path, script):
    result = run(script, "--out_dir", tmp_path, "--url", BAD_URL)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"could not download {BAD_URL}" in lines[0]
    assert str(tmp_path / "input.txt") in lines[0] and "--input" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no partial input.txt or temp file


def test_canonical_url_is_default():
    # what a user without --input downloads: the canonical Tiny Shakespeare, as --help states the default
    for script in ["shakespeare_char", "shakespeare"]:
        result = run(script, "--help", env={"COLUMNS": "500"})  # wide: argparse does not break the URL
        check_ok(result)
        assert "(default: https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt)" \
            in result.stdout


# -----------------------------------------------------------------------------
# openwebtext: its local files, shards and hub fallback are tests/test_fineweb.py's; here only an unreachable hub


def test_openwebtext_hub_unreachable(tmp_path):
    # HF_HUB_OFFLINE (set by run) makes the hub unreachable at once instead of after retries
    result = run("openwebtext", "--dataset", "Skylion007/openwebtext", "--out_dir", tmp_path,
                 env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot load dataset 'Skylion007/openwebtext'" in last and "--data_files" in last


def test_a_dataset_name_means_the_repository_data_folder():
    """train.py --dataset=shakespeare_char reads data/shakespeare_char/ of the repository, where its prepare.py
    writes (the library moved into gpt/ once pointed this at gpt/data/, which `make demo` then could not find)."""
    from gpt.taskdata import CACHE_DIR
    from gpt.tokendata import dataset_dir
    folder, prepare = dataset_dir('shakespeare_char')
    assert os.path.isfile(os.path.join(folder, 'prepare.py')), folder
    assert os.path.samefile(os.path.join(folder, '..', '..'), REPO) and prepare == 'data/shakespeare_char/prepare.py'
    assert os.path.normpath(CACHE_DIR) == os.path.join(os.path.realpath(REPO), 'data', 'eval')  # eval downloads
