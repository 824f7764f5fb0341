# LoRA on the scrambled-line task (config/finetune_shakespeare_scrambled.py, GPT-1's recipe): the pretrained
# character model frozen, rank-8 adapters on every linear layer of its blocks (gpt/lora.py), trained with the task head
# and the embedding (whose three new rows are the task's special tokens). The checkpoints hold those tensors and
# the name of the pretrained run, which loading rebuilds from.
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_gpt1.py
# $ python data/shakespeare_tasks/prepare.py
# $ python finetune.py config/finetune_shakespeare_scrambled.py config/finetune_shakespeare_scrambled_lora.py
# $ python finetune.py config/finetune_shakespeare_scrambled.py          # the full fine-tune, to compare
# (this file holds only what LoRA changes; the task, data and schedule are the first file's, applied first)
# Measured (2-core Intel Xeon with AMX, so dtype 'auto' is bf16 autocast; torch 2.13 CPU; OMP_NUM_THREADS=1, the two
# runs side by side on a machine shared with other jobs; seed 1337, one run each), accuracy on all 2,588 validation
# examples after the last of 250 steps (one standard error in brackets; the majority class scores 0.5104):
#   full fine-tune (config/finetune_shakespeare_scrambled.py, lr 1e-3):  0.901 (0.006), 884K parameters trained,
#                                                                         best.pt 3.3 MB, ~3 min
#   LoRA r=8 on all four layers of each block (this file, lr 3e-3):      0.871 (0.007), 74K parameters trained
#                                                                         (8.4%: adapters 66K, embedding 8.7K, head),
#                                                                         best.pt 0.3 MB, ~4 min, peak RSS 1.05 GB
# LoRA reaches 0.030 less than the full fine-tune (~3.4 standard errors of the difference) with a twelfth of the
# parameters trained; both are ~0.36-0.39 above the majority class. (The full run's 0.891 in its own header was
# measured on an fp32 CPU; this machine runs both in bf16.)
out_dir = 'out-scrambled-lora'
# LoRA:
lora_rank = 8
lora_alpha = 16.0
lora_dropout = 0.0
lora_targets = 'all'
learning_rate = 3e-3      # adapters take a higher rate than the whole network (1e-3)
