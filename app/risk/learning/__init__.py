"""Risk control that learns (风控模型): labels from what outcomes taught (label_store), a gradient-boosted model over
the rules' own features, versioned and promoted only when it beats the active rules (model), unsupervised anomaly
scores over the agent tree (anomaly), and the synthetic labelled history the tests, the bench and the demo train on
(synthetic)."""
