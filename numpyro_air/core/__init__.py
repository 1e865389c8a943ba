"""The AIR program: configuration (:mod:`.config`), networks (:mod:`.nets`), the spatial
transformer (:mod:`.transform`), presence distributions (:mod:`.distributions`), the z_pres prior
and its annealing (:mod:`.prior`), and the NumPyro model (:mod:`.model`) and guide (:mod:`.guide`)."""
