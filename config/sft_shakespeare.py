# Step 1 of the alignment demo (docs/alignment.md): supervised fine-tuning of the character-level Shakespeare model on prompt/response
# conversations in the chat template (loss on the responses only; the chat tokens are added to its vocabulary).
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# $ python data/shakespeare_prefs/prepare.py
# $ python train.py config/sft_shakespeare.py
# $ python sample.py --out_dir=out-sft-shakespeare --start="<|user|>Now, brother of<|assistant|>"
# Measured on 2 cores of an AMD EPYC (lscpu's model name; avx2, fp32), shared with two other engineers' jobs (load
# average ~5), with OMP_NUM_THREADS=1 and torch 2.13: 214 s. Val loss (response tokens only) 2.327 at step 0 (the
# pretrained model, chat-token rows still random) -> 1.664 at 100 -> 1.627 at 200 -> 1.577 at 400. The SFT policy's
# responses use the letter e for 11.3% of their letters (data/shakespeare_prefs/check.py), as Shakespeare does.
# 32 conversations (<= 55 tokens, padded) per iteration, 400 iterations = 12,800 conversations, ~0.8 epochs.
out_dir = 'out-sft-shakespeare'
init_from = 'out-shakespeare-char-cpu'
dataset = 'shakespeare_prefs'
eval_interval = 100
eval_iters = 20
log_interval = 50
always_save_checkpoint = False
gradient_accumulation_steps = 1
batch_size = 32
block_size = 64
dropout = 0.0
learning_rate = 1e-3
max_iters = 400
lr_decay_iters = 400
min_lr = 1e-4
warmup_iters = 20
beta2 = 0.99
device = 'cpu'
compile = False
