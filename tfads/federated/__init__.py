"""Federated media embeddings (EFLS-style vertical federated learning): PSI on the join key, split learning
of a media bottom model and an ad top model over gRPC, clipping and noise on what crosses
(docs/methods/federated.md "Federated media embeddings (EFLS)")."""
