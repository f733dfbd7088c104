//! A cluster agent: watches a source and streams exports to the hub.
