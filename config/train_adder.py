# minGPT's adder: 2-digit a + b, the sum written lowest digit first (loss on the sum only).
# $ python data/adder/prepare.py
# $ OMP_NUM_THREADS=1 python train.py config/train_adder.py
# $ python demos.py --out_dir=out-adder                 # exact match on the 500 held-out problems, greedy
# Expect: 100.00% exact match (500/500 held-out problems) after 2000 iterations, val loss 0.0003, in 51 s of
# training (train.py's wall time, with start-up and evaluations).
# Measured on 2 AMD EPYC cores shared with other jobs (load ~5), torch 2.13, fp32. OMP_NUM_THREADS=1: for a model
# this small one thread is faster, and on a busy machine two threads wait for each other (OMP_NUM_THREADS=2 took
# 655 s here).
# minGPT's gpt-nano (3 layers, 3 heads, 48 wide), batch 64 of whole examples (the masked-example format).
out_dir = 'out-adder'
dataset = 'adder'
eval_interval = 250
eval_iters = 20
log_interval = 100
always_save_checkpoint = False
gradient_accumulation_steps = 1
batch_size = 64
block_size = 6        # 7-token examples (4 digits in, 3 out): the model reads 6 and predicts the next 6
n_layer = 3
n_head = 3
n_embd = 48
dropout = 0.0
bias = True
pad_vocab_multiple = 1
gelu_approx = 'none'  # exact GELU: cheaper on CPU
learning_rate = 2e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 2e-4
warmup_iters = 100
weight_decay = 0.1
beta2 = 0.99
device = 'cpu'
dtype = 'float32'
compile = False
