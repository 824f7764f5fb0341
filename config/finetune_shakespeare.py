# Finetune OpenAI's GPT-2 XL on Shakespeare (GPT-2 BPE).
# $ python data/shakespeare/prepare.py
# $ python train.py config/finetune_shakespeare.py
# Expect: val loss ~3.3 -> ~2.9 within a few minutes on one A100 (the best checkpoint is usually
# reached within the first tens of iterations; more overfits).
# 1 batch * 1024 block * 32 accum = 32,768 tokens/iter; Shakespeare is ~300K tokens, so an epoch is ~9 iters.
out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-gpt2-xl'
dataset = 'shakespeare'
init_from = 'gpt2-xl'         # the largest GPT-2; gpt2 (124M) works on smaller GPUs or a CPU
always_save_checkpoint = False
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
learning_rate = 3e-5          # finetune at a constant small learning rate
decay_lr = False
dropout = 0.1
