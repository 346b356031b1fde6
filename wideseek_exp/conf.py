"""Structured configs: the schema and defaults of every config group, registered in Hydra's
ConfigStore as `base_config`. conf/config.yaml lists `base_config` first in its defaults, so every
YAML option is merged into these typed nodes: an unknown key, a wrong type or a missing required
value fails when the config is composed, before any work starts.

One dataclass per group holds the fields of all its options (an engine config carries the hf,
vllm and openai fields side by side); the option's YAML sets the ones it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from wideseek_exp import REPO_ROOT, WideseekError


# StrEnum: str() gives the bare value, so `${task}` interpolates as "build", not "Task.build".
class Task(StrEnum):
    build = "build"  # corpus, index, task sets, tiny model
    eval = "eval"  # rollouts + WideSearch scoring
    score = "score"  # score existing responses
    train = "train"  # multi-agent GRPO
    sft = "sft"  # imitation warm start
    data = "data"  # broad-task synthesis from tables
    serve_search = "serve_search"  # a search backend over HTTP


class ModelSource(StrEnum):
    tiny = "tiny"  # built locally by task=build (random weights, our tokenizer)
    # built locally by task=build: the tiny model above, warm-started by imitating the scripted expert (task=sft)
    tiny_sft = "tiny_sft"
    hub = "hub"  # a Hugging Face hub id (needs the hub or a warm cache; never used by tests)
    local = "local"  # a model folder on disk
    # a GGUF checkpoint shipped inside a package of the registry (model.package), converted by task=build to a
    # normal model folder at model.path (models/packaged.py)
    package = "package"


class OnError(StrEnum):
    skip = "skip"
    fail = "fail"


class Weighting(StrEnum):
    """trainer.weighting: the token weights of the loss (rl/advantages.py, which implements each)."""

    paper = "paper"  # 1 / (T * N_i * L_{i,a}): the paper's dual-level normalisation
    token_mean = "token_mean"  # one token mean over all rows (plain DAPO)
    agent_only = "agent_only"  # no token-level normalisation
    token_only = "token_only"  # no agent-level normalisation


@dataclass
class PathsConfig:
    root: str = "${repo_root:}"
    data: str = "${paths.root}/data"
    generated: str = "${paths.data}/generated"  # git-ignored: everything task=build makes
    corpus: str = "${paths.generated}/miniweb/corpus"
    index: str = "${paths.generated}/miniweb/index"
    miniweb_tasks: str = "${paths.generated}/tasks/miniweb"
    outputs: str = "${paths.root}/outputs"
    multirun: str = "${paths.root}/multirun"


@dataclass
class TrackingConfig:
    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI when set, else sqlite:///<repo root>/mlflow.db
    uri: str | None = None
    experiment: str = "wideseek-${task}"
    run_name: str | None = None
    param_prefix: str = "cfg."
    check_timeout_s: float = 5.0  # an unreachable server fails within this, before any work


@dataclass
class BuildConfig:
    force: bool = False  # rebuild even when the stamps say the inputs are unchanged


@dataclass
class TinyArchConfig:
    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 16384
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = True
    init_seed: int = 0


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    name: str = MISSING
    source: ModelSource = ModelSource.hub
    path: str = MISSING  # hub id, or the model folder
    revision: str | None = None
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    max_context_tokens: int = 32768  # per agent
    max_reply_tokens: int = 8192  # per reply; agent.max_reply_tokens follows it
    # the sampling temperature this model is run at (like a generation_config's); agent.temperature follows it
    temperature: float = 1.0
    # decoding aids for small models (agent.* follow them): replies under a reply grammar (agents/grammar.py:
    # off | schema | seen_urls), and replies ended as soon as they loop (engines/base.py)
    tool_grammar: str = "off"
    stop_loops: bool = False
    # the chat template's thinking (agent.thinking follows it): off, a reply is the call or the answer alone
    thinking: bool = True
    trust_remote_code: bool = False
    tiny: TinyArchConfig | None = None  # only for source=tiny / tiny_sft (the base model's architecture)
    # only for source=package: the registry package holding the checkpoint ("name==version") and its GGUF file
    package: str | None = None
    gguf_file: str | None = None
    # source=tiny_sft: the random tiny model (built from `tiny`) the warm start begins from
    warm_start_from: str | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class EngineConfig:
    name: str = MISSING  # hf | vllm | openai
    max_batch_size: int = 16
    device: str = "auto"
    # hf: KV of finished turns kept for the next turn's prompt (LRU, in MiB of the model's device); 0 disables
    prefix_cache_mb: int = 1024
    # vllm
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False  # training: free vLLM's GPU memory while gradients are computed
    max_model_len: int | None = None  # vLLM's context (null: the model's); bounds the KV memory it reserves
    # openai-compatible HTTP
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # a local server needs no key: an unset variable sends none
    served_model_name: str | None = None  # the server's name for the model (null: model.path)
    # token_ids: prompts and replies as token ids with logprobs (vllm serve, SGLang);
    # text: servers with a text /v1/completions (replies re-tokenised, logprobs NaN);
    # chat: hosted chat APIs, /v1/chat/completions with the prompt split into its turns (API baselines)
    prompt_format: str = "token_ids"
    max_concurrency: int = 32  # requests in flight at once
    timeout_s: float = 600.0  # per request
    max_retries: int = 5  # on network errors, timeouts, 408, 429 and 5xx
    retry_wait_s: float = 1.0  # the first wait before a retry; it doubles each time (at most 60 s)


@dataclass
class SearchConfig:
    name: str = MISSING  # local | web | server
    top_k: int = 3
    max_top_k: int = 10
    max_page_chars: int = 25_000
    # web (Serper-style search + Jina-style reader)
    search_url: str = "https://google.serper.dev/search"
    search_api_key_env: str = "SERPER_API_KEY"
    reader_url: str = "https://r.jina.ai/"
    reader_api_key_env: str | None = "JINA_API_KEY"  # null: a reader that needs no key
    cache_path: str | None = "${paths.generated}/web_cache.sqlite"  # shared by workers; null: no cache
    # server (HTTP client, and the address task=serve_search listens on)
    server_url: str = "http://127.0.0.1:8765"
    host: str = "127.0.0.1"
    port: int = 8765
    max_concurrency: int = 16  # web/server: requests in flight at once
    timeout_s: float = 30.0  # per request
    max_retries: int = 5  # on network errors, timeouts, 408, 429 and 5xx
    retry_wait_s: float = 1.0  # the first wait before a retry; it doubles each time (at most 60 s)


@dataclass
class AgentConfig:
    name: str = MISSING  # wideseek | singleseek
    policy: str = "model"  # model | scripted (engines/expert.py: the code baseline; the model gives only its tokenizer)
    max_subagents_per_call: int = II("subagents")  # the width W, stated in the lead's tool description
    lead_max_turns: int = 10
    subagent_max_turns: int = 20
    single_max_turns: int = 50
    max_context_tokens: int = II("model.max_context_tokens")
    max_reply_tokens: int = II("model.max_reply_tokens")
    max_queries_per_call: int = 5
    max_urls_per_call: int = 5
    summarizer: str = "extractive"  # none | extractive | llm
    summary_max_chars: int = 4000  # extractive: the most page text one access result keeps
    summary_max_tokens: int = 1024  # llm: the summariser's reply budget
    repeat_call_limit: int = 3  # the same tool call this many times in a row ends the agent (0: never)
    tool_wait_s: float = 1.0  # generation waits this long for running tool calls to join its batch
    thinking: bool = II("model.thinking")
    tool_grammar: str = II("model.tool_grammar")  # off | schema | seen_urls (agents/grammar.py)
    stop_loops: bool = II("model.stop_loops")  # end a reply caught in a loop at once (it fails either way)
    temperature: float = II("model.temperature")  # 1.0 for the paper's models
    top_p: float = 1.0


@dataclass
class RewardConfig:
    name: str = MISSING  # wideseek | item_f1 | row_f1
    answer_metric: str = "item_f1"
    format_bonus: float = 0.1  # a valid final table
    access_bonus: float = 0.05  # at least one access call
    length_penalty: float = 0.1  # at most this much ...
    length_penalty_start: int = 3000  # ... from this longest-reply length ...
    length_penalty_end: int = 5000  # ... reaching the full penalty here (tokens)


@dataclass
class JudgeConfig:
    name: str = MISSING  # exact | llm
    model: str = "gpt-4.1-2025-04-14"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_retries: int = 8
    timeout_s: float = 120.0
    cache_dir: str = "${paths.generated}/judge_cache"


@dataclass
class DataConfig:
    name: str = MISSING  # miniweb | widesearch | wideseek_train
    path: str | None = None  # a folder or file holding the split files
    train_file: str = "train.jsonl"
    test_file: str = "test.jsonl"
    gold_dir: str | None = None  # widesearch: widesearch_gold/<instance_id>.csv
    # More files (or folders / saved datasets) whose records join the train split: the released
    # width / depth / hybrid training files beside our synthesised tasks make one training mix.
    extra_train: list[str] = field(default_factory=list)
    split: str = "test"
    limit: int | None = None
    on_error: OnError = OnError.fail
    seed: int = 0  # task-set generation (miniweb): fixed so the task set does not move with `seed`


@dataclass
class EvalConfig:
    samples: int = 4  # trials per task (Avg@4 / Max@4 / Pass@4)
    limit: int | None = None  # first N tasks of the split (sampling settings live in agent.*)
    # every N-th task of the split, before `limit`: a split stored family by family gives a small subset
    # that spans the families (its first 8 mini-web test tasks are all one family)
    stride: int = 1
    # Trajectories in flight at once. Each brings its lead and its subagents to the engine's batches;
    # more keeps batches full, fewer lets trials finish (and be saved) sooner.
    max_active_trajectories: int = II("engine.max_batch_size")


@dataclass
class ScoreConfig:
    # task=score: a finished eval folder (trials.jsonl) or a folder of the official WideSearch
    # runner's per-trial files ({model}_{instance_id}_{trial}[_multi_agent]_response.jsonl)
    responses: str | None = None
    model_prefix: str | None = None  # official files: only those of this model config name


@dataclass
class SynthesisConfig:
    """task=data: broad tasks synthesised from tables (tasks/synthesis.py)."""

    source: str = "miniweb"  # hybridqa | miniweb
    hybridqa_tables: str | None = None  # HybridQA's tables_tok folder: <table_id>.json
    hybridqa_passages: str | None = None  # its request_tok folder: <table_id>.json {link: passage}
    out_dir: str = "${paths.generated}/wideseek_train"  # fixed, so that a rerun resumes (data=wideseek_train reads it)
    limit: int | None = None  # at most this many candidate tasks (null: every table x tasks_per_table)
    tasks_per_table: int = 1  # candidates per table, each with its own target size and query
    target_rows_min: int = 10  # the paper's target sizes; capped by the table's own row count
    target_rows_max: int = 50
    min_rows: int = 3  # the paper drops gold tables under 3 rows
    agreement_threshold: float = 0.9  # item F1 of answer 2 against answer 1 (the paper's 0.9 agreement)
    # The "too easy" filter: a baseline's answer, scored by our scorer against the gold, must stay under
    # baseline_max_item_f1. closed_book: the generator without the source material; agent: the configured
    # agent (agent=, search=, the generator's engine) with search, one rollout per task; none: no filter.
    baseline: str = "closed_book"  # closed_book | agent | none
    baseline_max_item_f1: float = 0.5
    query_temperature: float = 0.7  # varied queries across tables
    answer_temperature: float = 0.7  # two independent answers need sampling
    max_tokens: int = 4096  # per generator reply
    max_source_rows: int = 60  # table rows shown to the generator
    max_passage_chars: int = 600  # per linked passage shown
    max_concurrency: int = 16  # candidates per chunk: each stage sends at most this many requests at once
    thinking: bool = False  # chat-template thinking for the generator (off: the reply is the answer)
    test_fraction: float = 0.05  # share of kept tasks written to test.jsonl (by a hash of the instance id)
    seed: int = 0
    # USD per token, for the cost column of the data card (null: tokens only)
    price_per_input_token: float | None = None
    price_per_output_token: float | None = None


@dataclass
class TrainerConfig:
    name: str = MISSING  # grpo | debug
    num_generations: int = 8  # G rollouts per task
    tasks_per_step: int = 128
    max_steps: int = 156
    learning_rate: float = 1e-6
    lr_scheduler: str = "constant"
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    dual_clip: float = 10.0
    beta: float = 0.0  # KL coefficient (0: no KL, as the paper)
    weighting: Weighting = Weighting.paper
    turn_selection: bool = True  # the reference's choice of trained turns (false: every reply of every agent)
    rollouts_per_micro_batch: int = 1  # the rows of this many trajectories per forward/backward (0: a whole step's)
    micro_batch_rows: int = 4  # rows per forward pass within it (bounds the activation peak of the LM head)
    gradient_checkpointing: bool = False
    # the update's forward and backward in bf16 autocast, the weights and the optimizer in fp32. null: on GPU
    # when model.dtype resolves to bf16; true: on a CPU too (with bf16 units it is faster; the sampler's fp32
    # logprobs then differ from the update's by bf16 rounding, which policy/logprob_gap shows)
    bf16: bool | None = None
    train_split: str = "train"
    eval_split: str = "test"  # evaluated every eval_every steps and at the end (eval.limit tasks x eval.samples)
    eval_every: int = 20  # 0: only at the end
    save_every: int = 20  # 0: no periodic checkpoints (Ctrl-C or a crash still saves one)
    keep_checkpoints: int = 2  # the most recent ones kept (0: all)
    checkpoint_dir: str | None = None  # null: <job folder>/checkpoints
    resume: bool = False  # continue from the last checkpoint in checkpoint_dir
    ddp_timeout_s: int = 10800  # collective timeout: the other ranks wait while rank 0 evaluates


@dataclass
class SftConfig:
    """The imitation warm start (task=sft; task=build makes it for model.source=tiny_sft). The defaults
    were sized on a 2-core CPU; the build's time and what each setting bought are measured in
    experiments/cpu_demo/README.md."""

    tasks: int = 128  # train tasks the expert plays (0: all 497)
    max_length: int = 6144  # tokens per row
    # agent: one row per agent, its whole context (prompt, tool results, every reply; loss on the replies),
    # cut to its first max_length tokens: each reply is trained after exactly what inference shows it (the
    # task, the list report, every earlier report for the final table). turn: one row per reply, after the
    # most recent context_tokens of its context, optionally after the agent's prompt (keep_prompt,
    # prompt_share): cheaper rows, but a reply whose source is further back (the description in the task,
    # the list for a later wave, the reports for the table) cannot be learnt from them
    rows: str = "agent"
    context_tokens: int = 128  # rows=turn: context tokens kept before each reply
    keep_prompt: bool = False  # rows=turn: start every row with the agent's prompt
    prompt_share: float = 0.0  # rows=turn, keep_prompt=false: this share of the rows start with it (sft.seed)
    # entity subagents per expert trajectory that become rows (0: all), drawn with sft.seed; the lead and the
    # subagents of its first call (the entity set) always do. The lookups of one task are near copies of
    # each other, so a few per task leave the steps to more tasks
    subagents_per_task: int = 2
    # the expert's widths W in the demonstrations, cycled over its tasks (task k at widths[k % len]); fixed,
    # not `subagents`, so that a width sweep of the warm start evaluates one model. Widths are stated in the
    # lead's prompt, and the reply grammar caps each call at the run's W, so a warm start that has seen wide
    # calls fills whatever W it is given
    widths: list[int] = field(default_factory=lambda: [4])
    expert_max_reply_tokens: int = 4096  # the expert's own reply budget (its final tables are long)
    # one row per step (rows run from a few hundred to 6144 tokens: no padding); the default steps are about
    # two passes over the default tasks' 500 rows (lead, list subagent, 2 entity subagents each)
    max_steps: int = 920
    batch_size: int = 1
    learning_rate: float = 1.0e-3  # a 5M-parameter model from random weights takes a large step
    warmup_ratio: float = 0.05  # linear warm-up over this share of the steps (large steps early spike the loss)
    seed: int = 0
    # The copy stage before the SFT: rows of random token spans, each written twice, loss on the second copy,
    # so that the model learns to copy from its context (names, URLs, facts) before it imitates. At most
    # copy_steps steps (0: no copy stage); it ends once copy_target_accuracy is reached
    copy_steps: int = 1500
    copy_target_accuracy: float = 0.95  # mean greedy accuracy on the second copies over the last 20 steps
    copy_batch_size: int = 16
    copy_length: int = 128  # tokens per copy row
    copy_span_min: int = 6  # tokens per span
    copy_span_max: int = 24
    copy_learning_rate: float = 1.0e-3
    # then this many steps of copy rows made of the expert's own contexts: a passage, then spans drawn from it.
    # Real text repeats its tokens ("the", "of", a name's first word), so the copy must key on more than the
    # current token; random spans never teach that (rows of copy_text_length tokens, half of them passage)
    copy_text_steps: int = 300
    copy_text_length: int = 256
    # share of the SFT rows that are copy rows (mixed in with the expert's, copy_length tokens each)
    copy_share: float = 0.0
    # mixed precision: the forward and backward passes in bf16 under autocast, the weights and the optimizer
    # in fp32 (faster on a CPU with bf16 units; one without them computes the same, more slowly)
    bf16: bool = True
    # The list drill: after the imitation, list_drill_steps steps on the list subagents (the ones that find the
    # entity set) of list_drill_tasks more train tasks, played by the expert (mixed with the imitation's rows:
    # list_drill_replay, their share); 0 tasks or steps: none. On 68 held-out train tasks it raised the warm
    # start's item F1 from 15.2 to 22.0 (+6.8 +- 2.3 paired), the right list read in 44 trials instead of 25
    # (experiments/cpu_demo/README.md); on the demo's 40 test tasks the warm start fell instead (W=4 17.7 -> 14.4,
    # -3.3 +- 3.5), which is not resolved yet
    list_drill_tasks: int = 128
    list_drill_steps: int = 300
    list_drill_learning_rate: float = 5.0e-4
    list_drill_replay: float = 0.5
    # On-policy imitation (DAgger): after the imitation above, each round the model plays dagger_tasks train
    # tasks of its own (after the expert's sft.tasks), the expert labels every state where the model's reply
    # differs from its own, and the model trains dagger_steps steps on those rows (at most
    # dagger_rows_per_agent per agent), mixed with the expert's rows (dagger_replay: their share)
    dagger_rounds: int = 0
    dagger_tasks: int = 32
    dagger_steps: int = 200
    dagger_learning_rate: float = 5.0e-4
    dagger_replay: float = 0.5
    dagger_rows_per_agent: int = 2


@dataclass
class ExpConfig:
    name: str = "none"
    train: bool = False  # sweeps: train before evaluating each point
    values: list[Any] = field(default_factory=list)  # the points a sweep visits (for reports)


@dataclass
class Config:
    task: Task = Task.build
    subagents: int = 4  # the width W: most subagents per create_sub_agents call
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    model: ModelConfig = MISSING
    # The lead-vs-subagent ablation: subagents on another model (+model@subagent_model=NAME); null: `model`
    subagent_model: ModelConfig | None = None
    engine: EngineConfig = MISSING
    # The page summariser of agent.summarizer=llm on a helper model of its own, as the paper's access tool
    # uses one: its engine (+engine@summarizer_engine=openai for an API or a `vllm serve` endpoint) and its
    # model (+model@summarizer_model=NAME; its tokenizer renders the summary prompts). Both null: the
    # subagents' engine and model summarise.
    summarizer_engine: EngineConfig | None = None
    summarizer_model: ModelConfig | None = None
    search: SearchConfig = MISSING
    agent: AgentConfig = MISSING
    reward: RewardConfig = MISSING
    judge: JudgeConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    exp: ExpConfig = field(default_factory=ExpConfig)


# ----------------------------------------------------------------------------------------------- checks
# What the schema cannot express, each key checked here once. main.py runs validate() before any job;
# a failure is one line that names the key.


def validate(cfg) -> None:
    """Raises WideseekError naming the first key whose value the job cannot use."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise WideseekError(f"config key '{missing[0]}' is required but has no value (set {missing[0]}=...)")
    OmegaConf.to_container(cfg, resolve=True)  # a broken interpolation fails here, naming its key

    for key in ("subagents", "eval.samples", "eval.stride", "eval.max_active_trajectories", "engine.max_batch_size",
                "search.top_k", "trainer.num_generations", "agent.lead_max_turns", "agent.subagent_max_turns",
                "agent.single_max_turns", "agent.max_queries_per_call", "agent.max_urls_per_call",
                "agent.max_reply_tokens"):
        _at_least(cfg, key, 1)
    for key in ("agent.temperature", "trainer.learning_rate", "seed"):
        _at_least(cfg, key, 0)
    if not 0 < cfg.agent.top_p <= 1:
        raise WideseekError(f"config key 'agent.top_p' must be in (0, 1] (got {cfg.agent.top_p})")
    if cfg.model.source in ("tiny", "tiny_sft") and cfg.model.tiny is None:
        raise WideseekError(f"config key 'model.tiny' is required when model.source={cfg.model.source}")
    if cfg.model.source == "tiny_sft" and not cfg.model.warm_start_from:
        raise WideseekError("config key 'model.warm_start_from' is required when model.source=tiny_sft")
    if cfg.agent.policy not in ("model", "scripted"):
        raise WideseekError(f"config key 'agent.policy' must be model or scripted (got {cfg.agent.policy!r})")
    if cfg.agent.policy == "scripted" and cfg.agent.name != "wideseek":
        raise WideseekError("agent.policy=scripted plays agent=wideseek only (got agent=" + str(cfg.agent.name) + ")")
    check_sft(cfg.sft)
    if cfg.task == Task.train or (cfg.task == Task.eval and cfg.exp.train):
        check_training(cfg)


def _at_least(cfg, key: str, minimum: float) -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None and value < minimum:
        raise WideseekError(f"config key '{key}' must be at least {minimum} (got {value})")


def check_training(cfg) -> None:
    """What a job that trains the policy (task=train, a sweep point with exp.train=true) needs."""
    if cfg.engine.name not in ("hf", "vllm"):
        raise WideseekError(f"task=train generates with the policy being trained: engine=hf or engine=vllm (got "
                            f"engine={cfg.engine.name}; a remote server cannot take the new weights every step)")
    if cfg.engine.name == "vllm" and cfg.model.lora.enabled:
        raise WideseekError("engine=vllm takes the policy's full weights every step; with model.lora.enabled=true "
                            "use engine=hf")
    if cfg.get("subagent_model") is not None:
        raise WideseekError("task=train trains one shared policy for all roles: remove subagent_model")
    if cfg.trainer.num_generations < 2:
        raise WideseekError(f"config key 'trainer.num_generations' must be at least 2 for group-normalised "
                            f"advantages (got {cfg.trainer.num_generations})")
    if cfg.trainer.tasks_per_step < 1 or cfg.trainer.max_steps < 1:
        raise WideseekError("config keys 'trainer.tasks_per_step' and 'trainer.max_steps' must be at least 1")
    if cfg.agent.temperature <= 0:
        raise WideseekError("config key 'agent.temperature' must be above 0 for training (sampled rollouts)")
    if cfg.trainer.micro_batch_rows < 1:
        raise WideseekError("config key 'trainer.micro_batch_rows' must be at least 1")


def check_sft(sft) -> None:
    """The sft.* values (also checked by rl/imitation.py's entry points, which tests and scripts call directly)."""
    if str(sft.rows) not in ("agent", "turn"):
        raise WideseekError(f"config key 'sft.rows' must be agent or turn (got {sft.rows!r})")
    for key, low, high, closed in (("prompt_share", 0.0, 1.0, True), ("copy_share", 0.0, 1.0, False)):
        value = float(sft[key])
        if not (low <= value <= high if closed else low <= value < high):
            raise WideseekError(f"config key 'sft.{key}' must be in [{low:g}, {high:g}{']' if closed else ')'} "
                                f"(got {value})")
    for key in ("dagger_replay", "list_drill_replay"):
        if not 0.0 <= float(sft[key]) < 1.0:
            raise WideseekError(f"config key 'sft.{key}' must be in [0, 1) (got {sft[key]})")
    if not 0.0 < float(sft.copy_target_accuracy) <= 1.0:
        raise WideseekError(f"config key 'sft.copy_target_accuracy' must be in (0, 1] (got {sft.copy_target_accuracy})")
    for key in ("copy_text_steps", "subagents_per_task", "dagger_rounds", "dagger_tasks", "dagger_steps",
                "dagger_rows_per_agent", "list_drill_tasks", "list_drill_steps"):
        if int(sft[key]) < 0:
            raise WideseekError(f"config key 'sft.{key}' must be >= 0 (got {sft[key]})")
    if not sft.widths or any(int(w) < 1 for w in sft.widths):
        raise WideseekError(f"config key 'sft.widths' must be a non-empty list of widths >= 1 (got {list(sft.widths)})")
    if int(sft.copy_text_length) < 8:
        raise WideseekError(f"config key 'sft.copy_text_length' must be >= 8 tokens (got {sft.copy_text_length})")
    if int(sft.copy_span_min) < 2 or int(sft.copy_span_max) < int(sft.copy_span_min):
        raise WideseekError(f"config keys 'sft.copy_span_min' and 'sft.copy_span_max' must satisfy 2 <= min <= max "
                            f"(got {sft.copy_span_min} and {sft.copy_span_max})")


def register() -> None:
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
    ConfigStore.instance().store(name="base_config", node=Config)


register()
