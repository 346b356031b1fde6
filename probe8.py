import json, re
from pathlib import Path
from wideseek_exp.agents.expert import read_task
from wideseek_exp.search.bm25 import BM25Backend
from wideseek_exp.search.miniweb import list_url
b = BM25Backend.load(Path("data/generated/miniweb/index"))
tasks=[json.loads(l) for s in ("train","test") for l in open(f"data/generated/tasks/miniweb/{s}.jsonl")]
pairs={(t["entity_set"], read_task(t["query"]).description) for t in tasks}
def key(d):
    words=d.split()
    keep=[w for w in words if w[0].isupper() or w[0].isdigit() or w.startswith("(")]
    return " ".join([words[0]]+keep)
for k in (5,10):
  for form in ("This list names entries, the {d}.", "list entries {d}", "{t} list entries"):
    ok=0;miss=[]
    for slug,d in pairs:
        qs=[form.format(d=d, t=key(d))]
        urls=[h.url for hs in b.search(qs, k) for h in hs]
        ok+= list_url(slug) in urls
        if list_url(slug) not in urls: miss.append(d)
    print(k, form, ok, len(pairs), miss[:3])
