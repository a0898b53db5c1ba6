"""`llada-jax serve`: the OpenAI audio API over the served models (`app`), one scheduler thread
batching concurrent requests into the compiled decoding loops (`engine`), the response formats
(`formats`) and the Prometheus metrics (`metrics`)."""
