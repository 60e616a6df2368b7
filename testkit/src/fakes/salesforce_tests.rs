//! End-to-end tests of the Salesforce fake over real HTTP.
