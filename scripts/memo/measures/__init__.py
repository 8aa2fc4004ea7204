"""The other memorization measures beside M (measures.py) and their parts; here the settings
they are computed with by default, which the command line shows without loading torch."""

EPS_DRAWS = 8                  # reparameterization draws averaged in final_loss and, per
                               # checkpoint, in the loss whose gradient self_influence takes
N_SAMPLES = 10_000             # model samples for the 1/3 rule
N_VECTORS = 10                 # curvature: Rademacher vectors
H = None                       # curvature: None for exact Hessian-vector products, else the
                               # step of the forward difference the sources use
