//! Mux.Cool: many sessions over one stream.
