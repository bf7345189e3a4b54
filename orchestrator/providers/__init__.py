"""GPU capacity providers: the interface in :mod:`.base`, one package per cloud (:mod:`.vast`)."""
