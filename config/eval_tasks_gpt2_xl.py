# Evaluate OpenAI's gpt2-xl (1558M) on HellaSwag and LAMBADA with eval.py (the data downloads once, to data/eval/).
# $ python eval.py config/eval_tasks_gpt2_xl.py
# $ torchrun --standalone --nproc_per_node=8 eval.py config/eval_tasks_gpt2_xl.py    # one node, 8 GPUs
# Published figures to set beside the results (not measured in this repository: its test machine has no weights):
#   hellaswag  acc 0.4004, acc_norm 0.5089   lm-evaluation-harness, 0-shot (as quoted in llm.c's dev/data/hellaswag.py)
#              acc_token ~0.4893               llm.c's own scoring (see config/eval_tasks_gpt2.py)
#   lambada    acc 63.24%, ppl 8.63        the GPT-2 paper, Table 3
#   (the paper's LAMBADA accuracy used a stop-word filter and its own text processing, so eval.py's
#   lambada, which follows the harness's lambada_openai, is not expected to reproduce it exactly;
#   the harness's ppl is per word, exp of minus the mean log-likelihood of a last word)
# The loss on OpenWebText is train.py's job: config/eval_gpt2_xl.py.
init_from = 'gpt2-xl'
tasks = 'hellaswag,lambada'
batch_size = 16
