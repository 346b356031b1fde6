"""The world the agents search: the mini-web corpus, its bm25 backend, and later web and server backends."""
