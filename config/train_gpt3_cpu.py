# GPT-3's training recipe at CPU scale, on character-level Shakespeare: schedules in tokens, the batch-size
# ramp, and alternating dense and locally banded attention, in a few minutes on a laptop.
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_gpt3_cpu.py
# 8 sequences * 128 tokens * 8 micro-batches = 8,192 tokens per step at full batch, ramped up from 2,048 over
# the first 1M tokens (2,048 at step 0, 4,096 at 100, 7,168 at 200, 8,192 from ~230); lr warmup over 100K tokens,
# cosine decay towards 10% at 3M tokens; 440 steps, 2.73M tokens (the lr is at 4.4e-4 of 3e-3 at the end).
# Expect (2-core AMD EPYC, AVX2, fp32, torch 2.13): val loss 2.476 at step 100, 2.360 at 200, 2.152 at 300,
# 2.027 at 400, 1.999 at 440; 204 s in all, ~12,500 tokens/s. The log shows tokens per step and tokens so far.
out_dir = 'out-gpt3-cpu'
dataset = 'shakespeare_char'
device = 'cpu'
compile = False
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
attn_pattern = 'alternating'  # layers 0, 2 dense; 1, 3 banded
attn_window = 32
dropout = 0.0
bias = True
pad_vocab_multiple = 1
gelu_approx = 'none'
batch_size = 8
gradient_accumulation_steps = 8
learning_rate = 3e-3
min_lr = 3e-4
warmup_tokens = 100_000
lr_decay_tokens = 3_000_000
batch_ramp_start = 2048
batch_ramp_tokens = 1_000_000
max_iters = 440
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_interval = 100
eval_iters = 20
log_interval = 20
always_save_checkpoint = False
