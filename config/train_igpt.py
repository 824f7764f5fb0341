# Image GPT (Chen et al. 2020) on scikit-learn's 8x8 digits: pixels as tokens of an 8-colour k-means palette
# in raster order, after a start token; the model predicts every pixel from the ones above and to the left.
# $ python data/igpt/prepare.py
# $ python train.py config/train_igpt.py
# $ python demos.py --out_dir=out-igpt                 # val bits per dimension, out-igpt/completions.png
# Expect: MEASURED_IGPT
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
