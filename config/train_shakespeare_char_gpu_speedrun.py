# GPU speedrun: nanoGPT's GPU result on character-level Shakespeare (val 1.4697) in the least wall time on one GPU,
# from the command line to the evaluation that shows it (start-up and compilation counted).
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_shakespeare_char_gpu_speedrun.py
# Expect: NOT YET MEASURED. No GPU was available when this file was written; the recipe is a starting point to be
# measured (and tuned) on one, side by side with nanoGPT's `python train.py config/train_shakespeare_char.py`.
# Derived from config/train_shakespeare_char_speedrun.py (the CPU speedrun: Muon on the blocks' matrices, rotary
# positions, QK-norm, warmup-stable-decay) at nanoGPT's GPU model and batch (6 layers, 6 heads, 384 wide, dropout
# 0.2; 64 batch * 256 block * 1 accum = 16,384 tokens/iter), with:
# - eager, not compiled: this 10.7M model's step is a few ms of GPU work, while a cold torch.compile costs tens of
#   seconds, i.e. more than the whole run is meant to take (try --compile=True once the inductor cache is warm);
# - evaluations of 50 batches of val only (nanoGPT: 200 of train and val), every 100 iterations, none at start;
# - a fixed iteration schedule (not decay_on_clock), so that deterministic=True can reproduce the run.
out_dir = 'out-shakespeare-char-gpu-speedrun'
eval_interval = 100
eval_iters = 50
log_interval = 50
always_save_checkpoint = False
plot = False
eval_train = False
eval_at_start = False
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
pad_vocab_multiple = 64       # 65 characters -> 128 embedding rows: tensor-core friendly shapes
gelu_approx = 'none'
pos_emb = 'rope'
qk_norm = True
optim = 'muon'
muon_lr = 0.015
learning_rate = 4e-3
beta2 = 0.99
weight_decay = 0.1
lr_schedule = 'wsd'
cooldown_frac = 0.7
warmup_iters = 50
max_iters = 1200
lr_decay_iters = 1200
min_lr = 0.0
device = 'cuda'
compile = False
