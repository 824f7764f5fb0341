# Evaluate OpenAI's gpt2-medium on OpenWebText (no training).
# $ python data/openwebtext/prepare.py
# $ python train.py config/eval_gpt2_medium.py
# Expect: train/val loss ~2.85 / ~2.84 (nanoGPT's measurements on OpenWebText).
batch_size = 8
eval_iters = 500     # more batches give a tighter estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-medium'
