# A character-level Shakespeare GPT on a laptop CPU: 4 layers, 4 heads, 128 wide (0.8M parameters).
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_shakespeare_char_cpu.py
# $ python sample.py --out_dir=out-shakespeare-char-cpu
# Expect: val loss ~1.65 after 4000 iterations (1.69 at 3000), ~44 ms per iteration on 2 cores of a Xeon with AMX,
# where dtype='auto' trains in bf16 (`make demo`: 3.5 minutes for preparing, training and sampling). On a 2-core
# AVX2-only AMD EPYC (fp32): val 1.728 at 3000 and 1.665 at 4000, 50-75 ms per iteration, 287 s of training.
# 12 batch * 64 block * 1 accum = 768 tokens/iter; 4000 iters = ~3M tokens, ~3 passes over the data.
out_dir = 'out-shakespeare-char-cpu'
eval_interval = 500
eval_iters = 40
log_interval = 100
always_save_checkpoint = False
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0         # too small a model, trained too briefly, to overfit
pad_vocab_multiple = 1
gelu_approx = 'none'  # exact GELU (as nanoGPT): on CPU its kernel is ~4x faster than GPT-2's tanh form
learning_rate = 2e-3  # a small model takes a high learning rate
max_iters = 4000
lr_decay_iters = 4000
min_lr = 2e-4         # learning_rate / 10
beta2 = 0.99          # few tokens per iteration
warmup_iters = 100
device = 'cpu'
compile = False       # compiling takes longer than it saves on a run this short
