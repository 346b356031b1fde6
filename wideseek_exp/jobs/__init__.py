"""One module per job (task=...), each with `run(cfg, tracker, out)`: the thin orchestrators that
main.py dispatches to. Nothing in the library imports them."""
