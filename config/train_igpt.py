# Image GPT (Chen et al. 2020) on scikit-learn's 8x8 digits: pixels as tokens of an 8-colour k-means palette
# in raster order, after a start token; the model predicts every pixel from the ones above and to the left.
# $ python data/igpt/prepare.py
# $ OMP_NUM_THREADS=1 python train.py config/train_igpt.py
# $ python demos.py --out_dir=out-igpt                 # val bits per dimension, out-igpt/completions.png
# Expect: val 1.268 bits per dimension (bits per pixel: one channel) at iteration 1500, against the palette's
# unigram entropy of 2.289 bits; completions in out-igpt/completions.png that are recognisable digits. 430 s of
# training on 2 AMD EPYC cores shared with other jobs (OMP_NUM_THREADS=1, torch 2.13, fp32). Trained longer, the
# 0.45M-parameter model overfits the 1,438 images (val rises after ~1,400 of 2,000 iterations); best.pt keeps
# the lowest val loss.
# iGPT's model settings: untied output projection initialised to zero, no dropout, no biases (its code has
# none), AdamW betas 0.9/0.95 and no weight decay.
out_dir = 'out-igpt'
dataset = 'igpt'
eval_interval = 200
eval_iters = 20
log_interval = 100
always_save_checkpoint = False  # best.pt: the lowest val loss (1,438 training images: it would overfit)
gradient_accumulation_steps = 1
batch_size = 32       # images: 32 * 64 = 2,048 pixel tokens per step
block_size = 64       # 65-token examples (start token + 8 * 8 pixels)
n_layer = 4
n_head = 4
n_embd = 96
dropout = 0.0
bias = False
tie_embeddings = False
zero_init_head = True
pad_vocab_multiple = 1
gelu_approx = 'none'  # exact GELU: cheaper on CPU (iGPT used x * sigmoid(1.702 x), an approximation of it)
learning_rate = 2e-3
max_iters = 1500
lr_decay_iters = 1500
min_lr = 2e-4
warmup_iters = 100
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.95
device = 'cpu'
dtype = 'float32'
compile = False
