"""Test-time applications on top of the models and the sampler, each working with any decoder:

- retrieval.py: chunking, BM25 and dense retrievers, recall@k, the RAG prompt;
- judge.py: LLM-as-a-judge verdicts from choice-token probabilities, bias probes and mitigations;
- rouge.py: ROUGE-1/2/L, the reference-based baseline the judges are compared with;
- agent.py: the ReAct loop, its tool registry, and component and trajectory metrics.
"""
