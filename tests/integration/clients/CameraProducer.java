// A camera as plants build them: the official Java client (kafka-clients), sending image files
// with the producer settings a camera vendor picks (compression.type, linger, batching).
// Used by tests/integration/worker/test_worker_poison.py and test_worker_transactions.py (the
// java_camera fixture of their conftest); compiled at test time with javac
// against the Kafka jars that `make setup` fetched (deploy/local/lib).
//
// usage: java [-Dcamera.transactional.id=TID] CameraProducer BOOTSTRAP TOPIC LINE COMPRESSION ID=FILE...
//
// With camera.transactional.id, an exactly-once gateway: each run of consecutive images whose
// id starts with "aborted-", and each run of the others, is one transaction; the first kind is
// written to the log (flushed) and then aborted, the second committed.
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class CameraProducer {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, args[3]);
        props.put(ProducerConfig.LINGER_MS_CONFIG, "50");
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.MAX_REQUEST_SIZE_CONFIG, String.valueOf(16 * 1024 * 1024));
        String transactionalId = System.getProperty("camera.transactional.id");
        if (transactionalId != null) {
            props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, transactionalId);
        }
        try (KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
            byte[] key = args[2].getBytes(StandardCharsets.UTF_8);
            if (transactionalId != null) {
                producer.initTransactions();
            }
            List<Future<RecordMetadata>> sent = new ArrayList<>();
            Boolean aborting = null; // the kind of the open transaction; null: none open
            for (int i = 4; i < args.length; i++) {
                String[] pair = args[i].split("=", 2);
                boolean abort = pair[0].startsWith("aborted-");
                if (transactionalId != null && (aborting == null || aborting != abort)) {
                    end(producer, aborting);
                    producer.beginTransaction();
                    aborting = abort;
                }
                ProducerRecord<byte[], byte[]> record =
                        new ProducerRecord<>(args[1], 0, key, Files.readAllBytes(Path.of(pair[1])));
                record.headers().add("memkd-id", pair[0].getBytes(StandardCharsets.UTF_8));
                sent.add(producer.send(record));
            }
            end(producer, aborting);
            producer.flush();
            for (Future<RecordMetadata> future : sent) {
                future.get(); // a refused record fails the run, loudly
            }
        }
    }

    /** Ends the open transaction, if any: aborted ones after their records reached the log. */
    private static void end(KafkaProducer<byte[], byte[]> producer, Boolean aborting) {
        if (aborting == null) {
            return;
        }
        producer.flush();
        if (aborting) {
            producer.abortTransaction();
        } else {
            producer.commitTransaction();
        }
    }
}
