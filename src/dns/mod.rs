//! ClusterSet DNS: an authoritative server for the clusterset zone.
