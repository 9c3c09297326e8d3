"""The accuracy harness: the node's real pipeline over labelled photos and footage, and what follows from it.

Fleet side only (never on the device). `dataset` reads a labelled set, `observe` runs detect, gate, align and
embed on it, `scores` pairs the faces, `stats` fits the impostor tail and predicts open-set rates at list
sizes the data does not hold, `kofn` replays the tracker's K-of-N rule, `harness` puts them together and
`report` writes docs/accuracy.md with its CSV and PNG. docs/accuracy.md says what each figure means.
"""
