# Evaluate OpenAI's gpt2 on OpenWebText (no training).
# $ python data/openwebtext/prepare.py
# $ python train.py config/eval_gpt2.py
# Expect: train/val loss ~3.11 (train) / ~3.12 (val) (nanoGPT's measurements on OpenWebText).
batch_size = 8
eval_iters = 500     # more batches give a tighter estimate
eval_only = True
wandb_log = False
init_from = 'gpt2'
