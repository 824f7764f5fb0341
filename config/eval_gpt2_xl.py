# Evaluate OpenAI's gpt2-xl on OpenWebText (no training).
# $ python data/openwebtext/prepare.py
# $ python train.py config/eval_gpt2_xl.py
# Expect: train/val loss ~2.56 / ~2.54 (nanoGPT's measurements on OpenWebText).
batch_size = 8
eval_iters = 500     # more batches give a tighter estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-xl'
