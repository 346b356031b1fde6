"""The tools each role may call, as OpenAI-style function schemas.

The schemas reach the model through the chat template (`tools=`), which lists them in the system
turn. Names and argument shapes are the ones the released WideSeek-R1 checkpoint was trained with:

    lead      create_sub_agents(sub_agents=[{prompt}])                  at most W per call
    subagent  search(queries=[{query, count=3}])                        at most 5 per call
              access(urls=[{url, info_to_extract}])                     at most 5 per call
    single    search(query, count=3) / access(url, info_to_extract)    one per call

The descriptions state the real limits (the width W above all: a width sweep must change what the
lead reads, where the reference hard-codes "ten").
"""

from __future__ import annotations

from wideseek_exp import WideseekError

CREATE_SUB_AGENTS = "create_sub_agents"
SEARCH = "search"
ACCESS = "access"

LEAD = "lead"
SUBAGENT = "subagent"
SINGLE = "single"
ROLES = (LEAD, SUBAGENT, SINGLE)


def _function(name: str, description: str, properties: dict, required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def _list_of(description: str, most: int, properties: dict, required: list[str]) -> dict:
    item = {"type": "object", "properties": properties, "required": required}
    return {"type": "array", "description": description, "items": item, "minItems": 1, "maxItems": most}


def _count(default_count: int, max_count: int) -> dict:
    return {"type": "integer", "description": f"How many results to return (default {default_count}, "
                                              f"at most {max_count}).", "default": default_count}


def lead_tools(width: int) -> list[dict]:
    prompt = {"type": "string", "description": "The subtask, self-contained: the subagent sees nothing else "
                                               "of the conversation. Say what to find and for which entities."}
    return [
        _function(
            CREATE_SUB_AGENTS,
            f"Start up to {width} subagents at once, one per subtask. Each subagent searches the web and reads "
            f"pages on its own, then reports what it found. The subagents of one call work in parallel and "
            f"their reports come back together. At most {width} subagents per call; any beyond {width} are "
            f"ignored.",
            {"sub_agents": _list_of(f"One entry per subagent, at most {width}.", width, {"prompt": prompt},
                                    ["prompt"])},
            ["sub_agents"],
        )
    ]


def subagent_tools(max_queries: int, max_urls: int, default_count: int, max_count: int) -> list[dict]:
    query = {"type": "string", "description": "A web search query."}
    url = {"type": "string", "description": "A URL taken from your search results."}
    info = {"type": "string", "description": "What to extract from this page."}
    return [
        _function(
            SEARCH,
            f"Search the web with up to {max_queries} queries at once. Each query returns the title, URL and "
            f"a snippet of its top results.",
            {"queries": _list_of(f"The queries, at most {max_queries}.", max_queries,
                                 {"query": query, "count": _count(default_count, max_count)}, ["query"])},
            ["queries"],
        ),
        _function(
            ACCESS,
            f"Read up to {max_urls} web pages at once and extract the information you ask for from each. Only "
            f"URLs that appeared in your own search results can be read.",
            {"urls": _list_of(f"The pages, at most {max_urls}.", max_urls, {"url": url, "info_to_extract": info},
                              ["url", "info_to_extract"])},
            ["urls"],
        ),
    ]


def single_tools(default_count: int, max_count: int) -> list[dict]:
    return [
        _function(
            SEARCH,
            "Search the web with one query. Returns the title, URL and a snippet of its top results.",
            {"query": {"type": "string", "description": "A web search query."},
             "count": _count(default_count, max_count)},
            ["query"],
        ),
        _function(
            ACCESS,
            "Read one web page and extract the information you ask for. Only URLs that appeared in your search "
            "results can be read.",
            {"url": {"type": "string", "description": "A URL taken from your search results."},
             "info_to_extract": {"type": "string", "description": "What to extract from this page."}},
            ["url", "info_to_extract"],
        ),
    ]


def tools_for(role: str, agent_cfg, search_cfg) -> list[dict]:
    """The schemas of `role` with the limits of the configuration."""
    default_count, max_count = int(search_cfg.top_k), int(search_cfg.max_top_k)
    if role == LEAD:
        return lead_tools(int(agent_cfg.max_subagents_per_call))
    if role == SUBAGENT:
        return subagent_tools(int(agent_cfg.max_queries_per_call), int(agent_cfg.max_urls_per_call),
                              default_count, max_count)
    if role == SINGLE:
        return single_tools(default_count, max_count)
    raise WideseekError(f"unknown role {role!r}; expected one of {ROLES}")
