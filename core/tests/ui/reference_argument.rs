#[courier::service]
pub trait Log {
    async fn write(&self, line: &str);
}

fn main() {}
