"""
Hub datasets under today's `datasets`: load_dataset as datasets.load_dataset, plus the way round the datasets that
still ship a loading script. Since datasets 4.0 (July 2025) such a repository fails with `RuntimeError: Dataset
scripts are no longer supported, but found openwebtext.py` (nanoGPT #633); the hub keeps a parquet conversion of
most of them on the revision refs/convert/parquet, which needs no script, so that is read instead, saying so. Where
there is none, the failure is one line saying what to do. Every place this repository loads a hub dataset (the
corpora of data/, eval data, SFT and preference data) goes through here.
"""

from gpt.errors import UserError

PARQUET_REVISION = 'refs/convert/parquet'  # the hub's parquet conversion of every dataset it can convert
SCRIPTS_ERROR = 'Dataset scripts are no longer supported'  # datasets>=4's RuntimeError for a script dataset


def load_dataset(name, config=None, split=None, streaming=False, instead='pass local files instead', what=None):
    """datasets.load_dataset(name, config, split=split, streaming=streaming); a repository that ships a loading
    script is read from its parquet conversion (PARQUET_REVISION) instead, with a note. Any failure (offline, an
    unknown name, config or split, a script dataset without a conversion) is one line naming what (default: the
    name) and ending with `instead`, what the caller's user can do."""
    import datasets
    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as e:  # datasets raises many kinds
        if not (isinstance(e, RuntimeError) and SCRIPTS_ERROR in str(e)):
            raise UserError(f"cannot load {what or repr(name)}{f' ({config})' if config else ''} from the hub "
                            f"({first_line(e)}); {instead}") from None
        script = str(e).rsplit(' ', 1)[-1]
    print(f"note: {name} ships a loading script ({script}), which datasets {datasets.__version__} no longer runs; "
          f"reading the hub's parquet conversion of it ({PARQUET_REVISION}) instead", flush=True)
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=streaming, revision=PARQUET_REVISION)
    except Exception as e:  # no conversion (a revision not found), or offline by now: datasets raises many kinds
        raise UserError(f"{name} ships a loading script ({script}), which datasets>=4 no longer runs, and its parquet "
                        f"conversion ({PARQUET_REVISION}) cannot be read ({first_line(e, 160)}); {instead}, or run the "
                        f"script under an older datasets (pip install 'datasets<4')") from None
    partial = partial_conversion(name, config)
    if partial:
        print(f"note: the hub converted only the first part of {name} ({partial}; it stops at about 5 GB of parquet "
              f"a split): this reads that part, not the whole dataset", flush=True)
    return ds


def first_line(e, n=200):
    """An exception's first line (its type where it has no text), at most n characters."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:n]


def partial_conversion(name, config=None):
    """The folder of a partial parquet conversion (the hub's converter stops a large split at ~5 GB and calls the
    folder partial-<split>), or '' when it is whole or cannot be told (offline: the load above says so)."""
    try:
        from huggingface_hub import HfApi
        files = HfApi().list_repo_files(name, repo_type='dataset', revision=PARQUET_REVISION)
    except Exception:  # a listing is only for the note
        return ''
    parts = sorted({'/'.join(f.split('/')[:2]) for f in files if f.count('/') >= 2
                    and (config is None or f.split('/')[0] == config) and f.split('/')[1].startswith('partial-')})
    return ', '.join(parts)
