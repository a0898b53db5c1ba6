"""Fixed English text for accuracy checks of a language model on real weights (int8 vs float:
tests/test_quantize.py, benchmarks/bench_quantize.py)."""

# Two paragraphs of plain English prose (299 SmolLM2-135M tokens).
ENGLISH = (
    'Speech recognition systems turn spoken audio into written text. For many years they were built'
    ' from separate acoustic, pronunciation and language models, each trained on its own data and '
    'tuned by hand. Modern systems learn the whole mapping at once from thousands of hours of '
    'transcribed speech, and a large language model can then read the first draft and correct the '
    'words that the acoustic model got wrong, such as names, numbers and rare words. The quality of'
    ' a system is usually measured by its word error rate: the number of substituted, deleted and '
    'inserted words divided by the number of words in the reference. The river rises in the hills '
    'to the north and runs south through farmland for almost two hundred miles before it reaches '
    'the sea. In spring the melting snow swells it, and the towns along its banks have built walls '
    'and channels to keep the water out of their streets. Fishermen still work the lower reaches, '
    'although the catch is smaller than it was when their grandparents were young. Every summer a '
    'festival celebrates the first boats of the season with music, food and a race between crews '
    'from each village. Scientists who study the river measure its temperature, its flow and the '
    'amount of sediment it carries, and their records now cover more than a century. They have '
    'found that the water is warmer than it used to be, and that some species of fish have moved '
    'further upstream in search of cooler pools. Local schools take children to the banks to count '
    'birds and insects, and the results are shared with researchers at the university.')
