"""ADR-029's first integration example, ``semanticSearchWithAttention``: index a few dozen
sentences with the packaged embedding model (offline), then for each query fetch k·3 neighbours
by vector and rerank them with attention (late interaction over token vectors, and
memory-attention over the pooled vectors), keeping the top k.

Run: python examples/semantic_search.py
"""
from embeddings_adapter import EmbeddingService

SENTENCES = [
    "The cat sat on the warm windowsill all afternoon.", "Dogs love to chase balls in the park.",
    "A kitten curled up and purred on the sofa.", "Our puppy learned to fetch the newspaper.",
    "Parrots can imitate human speech remarkably well.", "Goldfish need clean water and a filter.",
    "Python lists grow dynamically as you append items.",
    "A hash map gives constant-time lookups.",
    "Binary search halves the search interval each step.",
    "Recursion needs a base case to stop.",
    "Garbage collection frees memory that is no longer reachable.",
    "Compilers translate source code into machine instructions.",
    "The stock market fell sharply after the announcement.", "Interest rates rose for a third month.",
    "Inflation erodes the purchasing power of savings.", "The central bank kept its policy unchanged.",
    "Bake the bread at 220 degrees for thirty minutes.", "Whisk the eggs with sugar until pale.",
    "Fresh basil makes the tomato sauce fragrant.", "Let the dough rise in a warm place overnight.",
    "Simmer the soup gently and season with salt.", "The marathon runner crossed the line first.",
    "The goalkeeper saved a penalty in extra time.", "Tennis players serve to start each point.",
    "Cyclists climbed the mountain pass in the rain.", "The swimmer broke the national record.",
    "Mars has the tallest volcano in the solar system.", "Jupiter's moons were seen by Galileo.",
    "A light-year measures distance, not time.", "Black holes bend light around them.",
    "The telescope captured a distant spiral galaxy.", "Comets grow tails as they near the sun.",
]
QUERIES = ["which pets make noises or purr?", "how do I make bread?",
           "fast lookup data structure", "planets and moons"]

service = EmbeddingService()                       # the packaged all-MiniLM-L6-v2, no network
ids = service.add_documents(SENTENCES)
print(f"indexed {len(ids)} sentences with {service.model_id} (d = {service.dim})")

for query in QUERIES:
    print(f"\nquery: {query}")
    for mechanism in (None, "memory-attention"):
        results = service.semantic_search_with_attention(query, 3, mechanism=mechanism)
        print(f"  reranked by {results.mechanism} on {results.backend} "
              f"({results.timings_ms['total']:.1f} ms, query embedding included):")
        for r in results:
            print(f"    {r['score']:+.3f}  [{r['corpus_id']:>2}] {r['text']}")
