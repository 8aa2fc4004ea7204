"""The other memorization measures beside M (measures.py) and their parts; here the settings
they are computed with by default, which the command line shows without loading torch."""

EPS_DRAWS = 8                  # reparameterization draws averaged in final_loss
N_SAMPLES = 10_000             # model samples for the 1/3 rule
N_VECTORS, H = 10, 1e-3        # curvature: Rademacher vectors and step
