# Speedrun: the lowest validation loss on character-level Shakespeare in 5 minutes of training on 2 CPU cores.
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_shakespeare_char_speedrun.py
# Expect (quiet 2-core AMD EPYC, AVX2 only, fp32, torch 2.13; this host ~1.45x slower than its usual self that
# day): val 1.851 at step 425 (69 s), 1.769 at 850 (133 s), 1.648 at 1275 (200 s), 1.543 at 1700, the end of the
# schedule, after 273 s (the clock starts with the training loop and includes evaluations). Below 1.50, the goal,
# is not reached yet. The recipe is config/train_shakespeare_char_speedrun_1886.py's (Muon, rotary, QK-norm,
# warmup-stable-decay with half the run cooling down; that header measures each choice), run 7x as long.
# The same 4x128 model with AdamW and a cosine schedule (this file's previous recipe) reached 1.575 in 237 s on a
# Xeon with AMX in bf16, a faster machine. If max_time stops the run before max_iters on a slower machine, the
# cooldown is cut short: lower max_iters and lr_decay_iters together to ~280 s / (seconds per step).
out_dir = 'out-shakespeare-char-speedrun'
eval_interval = 425
eval_iters = 40
log_interval = 100
always_save_checkpoint = False
plot = False
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 24
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
pad_vocab_multiple = 1
gelu_approx = 'none'  # exact GELU (as nanoGPT): on CPU its kernel is ~4x faster than GPT-2's tanh form
learning_rate = 4e-3
max_iters = 1700
lr_decay_iters = 1700
min_lr = 0.0
beta2 = 0.99
warmup_iters = 50
pos_emb = 'rope'
qk_norm = True
optim = 'muon'
muon_lr = 0.02
lr_schedule = 'wsd'
cooldown_frac = 0.5
eval_train = False
device = 'cpu'
max_time = 300.0
