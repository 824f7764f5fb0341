# minGPT's sorting demo: sequences of 6 symbols from 3, the model writes them sorted (loss on that half only).
# $ python data/sort/prepare.py
# $ OMP_NUM_THREADS=1 python train.py config/train_sort.py
# $ python demos.py --out_dir=out-sort                 # exact match on the 182 held-out sequences, greedy
# Expect: 100.00% exact match (182/182 held-out sequences) after 600 iterations, val loss 0.0005, in 31 s of
# training (train.py's wall time, with start-up and evaluations); a 250-iteration run (tests/test_demos.py) also reached 100%.
# Measured on 2 AMD EPYC cores shared with other jobs (load ~5), torch 2.13, fp32. OMP_NUM_THREADS=1: for a model
# this small one thread is faster, and on a busy machine two threads wait for each other (OMP_NUM_THREADS=2 took
# 170 s here).
# minGPT's gpt-nano (3 layers, 3 heads, 48 wide), batch 64 of whole examples (the masked-example format).
out_dir = 'out-sort'
dataset = 'sort'
eval_interval = 100
eval_iters = 20
log_interval = 100
always_save_checkpoint = False
gradient_accumulation_steps = 1
batch_size = 64
block_size = 11       # 12-token examples: the model reads 11 and predicts the next 11
n_layer = 3
n_head = 3
n_embd = 48
dropout = 0.0
bias = True
pad_vocab_multiple = 1
gelu_approx = 'none'  # exact GELU: cheaper on CPU
learning_rate = 2e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 2e-4
warmup_iters = 100
weight_decay = 0.1
beta2 = 0.99
device = 'cpu'
dtype = 'float32'
compile = False
