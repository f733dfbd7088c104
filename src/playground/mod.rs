//! `switchyard up`: a whole ClusterSet in one process.
