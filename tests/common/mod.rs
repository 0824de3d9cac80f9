pub mod fakeserver;
pub mod faultproxy;
pub mod s3server;
