# Evaluate OpenAI's gpt2-medium (350M) on HellaSwag and LAMBADA with eval.py (the data downloads once, to data/eval/).
# $ python eval.py config/eval_tasks_gpt2_medium.py
# $ torchrun --standalone --nproc_per_node=8 eval.py config/eval_tasks_gpt2_medium.py    # one node, 8 GPUs
# Published figures to set beside the results (not measured in this repository: its test machine has no weights):
#   hellaswag  no published figure sourced here
#   lambada    acc 55.48%, ppl 15.60       the GPT-2 paper, Table 3
#   (the paper's LAMBADA accuracy used a stop-word filter and its own text processing, so eval.py's
#   lambada, which follows the harness's lambada_openai, is not expected to reproduce it exactly;
#   the harness's ppl is per word, exp of minus the mean log-likelihood of a last word)
# The loss on OpenWebText is train.py's job: config/eval_gpt2_medium.py.
init_from = 'gpt2-medium'
tasks = 'hellaswag,lambada'
batch_size = 16
