# A baby GPT (6 layers, 6 heads, 384 wide, 10.7M parameters) on character-level Shakespeare, on a GPU.
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_shakespeare_char.py
# Expect: val loss ~1.47 after 5000 iterations, ~3 minutes on one A100.
# 64 batch * 256 block * 1 accum = 16,384 tokens/iter.
out_dir = 'out-shakespeare-char'
eval_interval = 250   # the model overfits quickly, so evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # only save when val improves
wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
pad_vocab_multiple = 1
gelu_approx = 'none'  # exact GELU (as nanoGPT): on CPU its kernel is ~4x faster than GPT-2's tanh form
learning_rate = 1e-3  # a small model can take a higher learning rate
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4         # learning_rate / 10
beta2 = 0.99          # a little higher: few tokens per iteration
warmup_iters = 100
