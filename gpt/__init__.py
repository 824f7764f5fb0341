"""
The library the top-level scripts share, one job a file. The layering, kept by the code: the scripts (train.py,
sample.py, ...) import this package and model.py; the package imports model.py (the network) and itself, never a
script, configurator.py or data/, and never edits sys.path.

    errors      UserError and the value checks: every mistake a user can make is one line
    device      device, dtype and autocast choice per machine; peak FLOP/s for MFU
    optim       AdamW's parameter groups and Muon
    tokendata   tokenizers, dataset metadata, the training windows (TokenData)
    datafiles   writing the token-data formats tokendata reads (the data/ scripts)
    corpus      pretraining corpora streamed, tokenized on every core, written as resumable shards
    hubdata     hub datasets under today's datasets: the parquet conversion of script datasets
    checkpoint  checkpoint files: atomic writes, safe loads, kinds, nanoGPT import, RNG and optimizer state
    loading     load_model for every init_from (scratch, resume, a run, a hub name, an HF directory, peft)
    run         a run's directory (lock, room, resume settings, log.jsonl, signals) and the process group
    schedule    train.py's learning rate, batch ramp and ETA
    train_checks  train.py's settings checked together
    nonfinite   train.py's optimizer step and its non-finite-step policy
    lossplot    the loss curve train.py draws
    hf          Hugging Face GPT-2 interchange
    lora        LoRA layers and peft's adapter format
    heads       GPT-1's task heads and the reward model's scalar head
    tasks       evaluation tasks: reading, scoring, metrics
    kvcache     the KV caches and the attention policy they own
    sampling    logit filters, sampling parameters, the next-token draw
    engine      Engine (continuous batching), generate / stream / batch, beam search
    fastpath    CPU weight layouts, compiled and CUDA-graph decoders
    decoding    load_for_decoding: the one set-up of a model for generation
    stops       stop strings and streamed text
    speculative speculative decoding: a draft model or prompt lookup, greedy-exact and exact in distribution
    openai_api  OpenAI's completions and chat requests as serve.py reads them: every option works or is a 400
    quantize    int8 weights
    chat        the chat template, its tokens, vocabulary growth
    prefs       SFT and preference data
    rl          log-probs, reward / DPO / PPO losses, GAE, rollouts
"""
