"""Fine-tuning LayoutLMv3 for its three downstream tasks on the one trainer, and predicting with the result on new
pages: entity labelling of words (FUNSD forms, CORD receipts), document classification (RVL-CDIP's task) and
extractive question answering (DocVQA's). `finetune.train.finetune` runs the job that the config's `task` names."""
