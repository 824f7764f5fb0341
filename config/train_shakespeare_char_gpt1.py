# The pretrained model of the GPT-1 fine-tuning demos (config/finetune_shakespeare_*.py): the character-level
# Shakespeare GPT of train_shakespeare_char_cpu.py (4 layers, 4 heads, 128 wide, 0.8M parameters) with a
# context of 128 characters instead of 64, so that two lines and the three special tokens fit uncut (the
# longest "follows" example is 116 tokens; at 64, 92% of them lost the end of line a, where b joins it).
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_shakespeare_char_gpt1.py
# 12 batch * 128 block * 1 accum = 1,536 tokens/iter; 2000 iters = ~3M tokens (as train_shakespeare_char_cpu.py's
# 4000 * 768), ~3 passes over the data.
# Measured (2-core AMD EPYC, AVX2, fp32, OMP_NUM_THREADS=1, the machine shared with other jobs at load ~6):
# val loss 2.219 at 500, 1.946 at 1000, 1.766 at 1500, 1.710 at 2000; 180-1200 ms per iteration under that
# load, ~22 minutes (alone on both cores: ~110 ms per iteration, ~4 minutes). The measured model's first 1175
# iterations followed a 4000-iteration schedule; it was then resumed with --init_from=resume --max_iters=2000
# --lr_decay_iters=2000 to fit the shared machine, so this file's schedule is the one it ended on.
out_dir = 'out-shakespeare-char-gpt1'
eval_interval = 500
eval_iters = 40
log_interval = 100
always_save_checkpoint = False
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 128
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0         # too small a model, trained too briefly, to overfit
pad_vocab_multiple = 1
gelu_approx = 'none'  # exact GELU (as nanoGPT): on CPU its kernel is ~4x faster than GPT-2's tanh form
learning_rate = 2e-3  # a small model takes a high learning rate
max_iters = 2000
lr_decay_iters = 2000
min_lr = 2e-4         # learning_rate / 10
beta2 = 0.99          # few tokens per iteration
warmup_iters = 100
device = 'cpu'
compile = False       # compiling takes longer than it saves on a run this short
