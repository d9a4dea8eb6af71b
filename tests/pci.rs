//! PCI platform tests with tiny guests (being written).
