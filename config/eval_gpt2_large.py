# Evaluate OpenAI's gpt2-large on OpenWebText (no training).
# $ python data/openwebtext/prepare.py
# $ python train.py config/eval_gpt2_large.py
# Expect: train/val loss ~2.66 / ~2.67 (nanoGPT's measurements on OpenWebText).
batch_size = 8
eval_iters = 500     # more batches give a tighter estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-large'
