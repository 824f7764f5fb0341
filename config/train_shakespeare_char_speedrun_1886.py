# Speedrun to nanoGPT's CPU result: val loss 1.886 on character-level Shakespeare, the loss nanoGPT's README CPU
# recipe reaches after its 2000 iterations, in a third of its wall time or less, from the command line on.
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_shakespeare_char_speedrun_1886.py
# $ python bench.py --mode=speedrun     # both runs side by side, taking turns: time to val <= 1.886, medians
# Measured with `python bench.py --mode=speedrun` (3 runs each, taking turns; nanoGPT itself from ../nanoGPT with
# its README CPU command; quiet 2-core AMD EPYC, AVX2 only, fp32, torch 2.13): ours reached val 1.8614 at step 230
# after 40.7, 44.0 and 41.4 s from launch (median 41.4 s), nanoGPT val 1.8857 at step 2000 after 153.7, 156.7 and
# 165.7 s (median 156.7 s): 0.264 of nanoGPT's time. ~165 ms per step here (this host ran ~1.45x slower today
# than the session that measured bench.py's tables). The same 240 steps under torchrun, 2 processes x 1 thread
# (--gradient_accumulation_steps=2 --batch_size=12) took 63.1 s against 51.7 s for 1 process x 2 threads.
# What wins (loss at equal iterations does not depend on the machine; cost per iteration does):
# - Muon on the blocks' matrices (gpt/optim.py; Newton-Schulz in fp32 on CPUs without fast bf16): 600 iterations of
#   this recipe's batch reach val 1.719 against AdamW's 1.926 (cosine, lr 4e-3), at 1.21x AdamW's step cost;
# - rotary positions and QK-LayerNorm: at 300 iterations, Muon alone 1.915, + rotary 1.845, + QK-norm 1.894,
#   both 1.804, for 1.04x and 1.08x the step cost;
# - ReLU^2 does not: with Muon alone 1.957 (worse than GELU's 1.915), and 1.07x the step cost in eager mode;
# - warmup-stable-decay: the loss falls fastest in the linear cooldown (half the run here), so a short run
#   with a full cooldown beats stopping a long cosine run early;
# - val-only evaluations (eval_train=False) at 0, 1/3, 2/3 and the end: each costs ~7 steps; 20 batches of
#   24 x 64 is twice the tokens of nanoGPT's eval_iters=20 at batch 12;
# - eager, not compiled (compile='auto' on a CPU): a cold compile alone takes longer than this whole run.
out_dir = 'out-shakespeare-char-speedrun-1886'
dataset = 'shakespeare_char'
eval_interval = 115
eval_at_start = False
eval_iters = 20
eval_train = False
log_interval = 23
always_save_checkpoint = False
plot = False
gradient_accumulation_steps = 1
batch_size = 24
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
pad_vocab_multiple = 1
gelu_approx = 'none'   # exact GELU: PyTorch's CPU kernel for it is several times faster than the tanh form
pos_emb = 'rope'
qk_norm = True
optim = 'muon'
muon_lr = 0.02
learning_rate = 4e-3   # AdamW's, for the embeddings and gains
weight_decay = 0.1
beta2 = 0.99
lr_schedule = 'wsd'
cooldown_frac = 0.5
warmup_iters = 50
max_iters = 230
lr_decay_iters = 230
min_lr = 0.0
device = 'cpu'
