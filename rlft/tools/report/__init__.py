"""`rlft compare`: an offline HTML dashboard comparing runs (rlft/tools/compare.py is the command).

runs.py     find run directories, read them, group them into variants (config minus seed)
stats.py    curves from metrics.jsonl, final scores, rliable's IQM / bootstrap CIs / profiles
figures.py  matplotlib figures
page.py     the self-contained HTML page
"""
