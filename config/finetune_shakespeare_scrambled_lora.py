# LoRA on the scrambled-line task (config/finetune_shakespeare_scrambled.py, GPT-1's recipe): the pretrained
# character model frozen, rank-8 adapters on every linear layer of its blocks (lora.py), trained with the task head
# and the embedding (whose three new rows are the task's special tokens). The checkpoints hold those tensors and
# the name of the pretrained run, which loading rebuilds from.
# $ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_gpt1.py
# $ python data/shakespeare_tasks/prepare.py
# $ python finetune.py config/finetune_shakespeare_scrambled_lora.py
# $ python finetune.py config/finetune_shakespeare_scrambled.py          # the full fine-tune, to compare
# Measured: see the figures below (filled in from the runs above; one seed each).
# The task, data and schedule of config/finetune_shakespeare_scrambled.py:
init_from = 'out-shakespeare-char-gpt1'
out_dir = 'out-scrambled-lora'
task = 'classification'
data_files = 'train=data/shakespeare_tasks/scrambled_train.jsonl,val=data/shakespeare_tasks/scrambled_val.jsonl'
fields = 'text'
label = 'label'
classes = 'real,scrambled'
device = 'cpu'
batch_size = 32
epochs = 1
max_train = 8000          # of 22,900 examples: 250 steps
eval_interval = 0         # one evaluation, on all 2,588 validation examples, after the last step
# LoRA:
lora_rank = 8
lora_alpha = 16.0
lora_dropout = 0.0
lora_targets = 'all'
learning_rate = 3e-3      # adapters take a higher rate than the whole network (1e-3)
